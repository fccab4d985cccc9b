//! Messages and attributes: EncryptMessage, DecryptMessage, ApplyControlToken,
//! FreeContextBuffer and QueryContextAttributesW.

use super::*;

pub(super) fn session_of(
    context: *mut SecHandle,
    routine: &str,
) -> Result<Arc<Mutex<Session>>, SECURITY_STATUS> {
    match self::context(context, routine) {
        Lookup::Found((.., session)) => Ok(session),
        Lookup::Unknown => Err(SEC_E_INVALID_HANDLE),
    }
}

/// EncryptMessage (ksecdd!SealMessage): one record into STREAM_HEADER / DATA / STREAM_TRAILER.
pub(crate) unsafe extern "win64" fn encrypt_message(
    context: *mut SecHandle,
    qop: u32,
    message: *mut SecBufferDesc,
    _sequence: u32,
) -> SECURITY_STATUS {
    thread::require_at_most("EncryptMessage", PASSIVE);
    let session = match session_of(context, "EncryptMessage") {
        Ok(s) => s,
        Err(status) => return status,
    };
    // SAFETY: the caller's message descriptor.
    let bufs = unsafe { buffers::buffers(message) };
    let find = |kind: u32| bufs.iter().position(|b| b.kind() == kind);
    let (Some(h), Some(d), Some(t)) = (
        find(SECBUFFER_STREAM_HEADER),
        find(SECBUFFER_DATA),
        find(SECBUFFER_STREAM_TRAILER),
    ) else {
        return SEC_E_INVALID_TOKEN;
    };
    let length = bufs[d].cbBuffer as usize;
    if length > tls::MAX_MESSAGE || (length > 0 && bufs[d].pvBuffer.is_null()) {
        return SEC_E_INVALID_PARAMETER;
    }
    let mut session = session.lock().unwrap_or_else(|e| e.into_inner());
    let (header, trailer) = session.framing();
    if (bufs[h].cbBuffer as usize) < header
        || (bufs[t].cbBuffer as usize) < trailer
        || bufs[h].pvBuffer.is_null()
        || bufs[t].pvBuffer.is_null()
    {
        return SEC_E_BUFFER_TOO_SMALL;
    }
    // SAFETY: the DATA buffer holds `length` bytes.
    let data = unsafe { std::slice::from_raw_parts_mut(bufs[d].pvBuffer as *mut u8, length) };
    let alert;
    let record = match qop {
        0 => session.encrypt(data),
        SECQOP_WRAP_OOB_DATA if data == [1, 0] => session.close_notify(),
        // A fatal alert after a failure: the one rustls queued for it (kemu cannot write an
        // alert of another description; the caller's is not checked against it).
        SECQOP_WRAP_OOB_DATA if length == 2 && data[0] == TLS1_ALERT_FATAL as u8 => {
            match session.take_failure_alert() {
                Some(a) => {
                    alert = a;
                    Ok(&alert[..])
                }
                None => Err(SEC_E_INVALID_TOKEN),
            }
        }
        _ => return SEC_E_UNSUPPORTED_FUNCTION,
    };
    let record = match record {
        Ok(r) => r,
        Err(status) => return status,
    };
    if record.len() < header + length || record.len() - header - length > bufs[t].cbBuffer as usize
    {
        return SEC_E_INTERNAL_ERROR;
    }
    let actual_trailer = record.len() - header - length;
    // SAFETY: header and trailer buffers hold at least `header` / `actual_trailer` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(record.as_ptr(), bufs[h].pvBuffer as *mut u8, header);
        std::ptr::copy_nonoverlapping(
            record[header + length..].as_ptr(),
            bufs[t].pvBuffer as *mut u8,
            actual_trailer,
        );
    }
    data.copy_from_slice(&record[header..header + length]);
    bufs[h].cbBuffer = header as u32;
    bufs[t].cbBuffer = actual_trailer as u32;
    SEC_E_OK
}

/// DecryptMessage (ksecdd!UnsealMessage): decrypts one record in place.
pub(crate) unsafe extern "win64" fn decrypt_message(
    context: *mut SecHandle,
    message: *mut SecBufferDesc,
    _sequence: u32,
    qop: *mut u32,
) -> SECURITY_STATUS {
    thread::require_at_most("DecryptMessage", PASSIVE);
    let session = match session_of(context, "DecryptMessage") {
        Ok(s) => s,
        Err(status) => return status,
    };
    // SAFETY: the caller's message descriptor.
    let bufs = unsafe { buffers::buffers(message) };
    if bufs.len() < 4 {
        return SEC_E_INVALID_TOKEN;
    }
    let Some(d) = bufs.iter().position(|b| b.kind() == SECBUFFER_DATA) else {
        return SEC_E_INVALID_TOKEN;
    };
    let base = bufs[d].pvBuffer as *mut u8;
    let total = bufs[d].cbBuffer as usize;
    if base.is_null() && total > 0 {
        return SEC_E_INVALID_TOKEN;
    }
    if !qop.is_null() {
        // SAFETY: the caller's out-parameter.
        unsafe { *qop = 0 };
    }
    let data = if total == 0 {
        &mut [][..]
    } else {
        // SAFETY: the DATA buffer holds `total` bytes, decrypted in place.
        unsafe { std::slice::from_raw_parts_mut(base, total) }
    };
    let r = session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .decrypt(data);
    let at = |offset: usize| -> *mut c_void {
        // SAFETY: offsets stay within the caller's buffer.
        unsafe { base.add(offset) as *mut c_void }
    };
    if r.status == SEC_E_INCOMPLETE_MESSAGE {
        if let Some(slot) = bufs.iter().position(|b| b.kind() == SECBUFFER_EMPTY) {
            bufs[slot] = SecBuffer::new(SECBUFFER_MISSING, std::ptr::null_mut(), r.missing as u32);
        }
        return r.status;
    }
    let extra = if r.consumed < total {
        SecBuffer::new(SECBUFFER_EXTRA, at(r.consumed), (total - r.consumed) as u32)
    } else {
        SecBuffer::EMPTY
    };
    if r.status == SEC_E_OK && r.header + r.plaintext + r.trailer > 0 {
        bufs[0] = SecBuffer::new(SECBUFFER_STREAM_HEADER, at(r.record_start), r.header as u32);
        bufs[1] = SecBuffer::new(
            SECBUFFER_DATA,
            at(r.record_start + r.header),
            r.plaintext as u32,
        );
        bufs[2] = SecBuffer::new(
            SECBUFFER_STREAM_TRAILER,
            at(r.record_start + r.header + r.plaintext),
            r.trailer as u32,
        );
        bufs[3] = extra;
    } else if r.status.is_success() {
        bufs[0] = SecBuffer::new(SECBUFFER_STREAM_HEADER, at(0), 0);
        bufs[1] = SecBuffer::new(SECBUFFER_DATA, at(0), 0);
        bufs[2] = SecBuffer::new(SECBUFFER_STREAM_TRAILER, at(0), 0);
        bufs[3] = extra;
    }
    r.status
}

/// ApplyControlToken (exported by ksecdd): SCHANNEL_SHUTDOWN readies a close_notify and
/// SCHANNEL_ALERT the failure's fatal alert, each produced by the next ISC/ASC call.
pub(crate) unsafe extern "win64" fn apply_control_token(
    context: *mut SecHandle,
    input: *mut SecBufferDesc,
) -> SECURITY_STATUS {
    thread::require_at_most("ApplyControlToken", PASSIVE);
    let session = match session_of(context, "ApplyControlToken") {
        Ok(s) => s,
        Err(status) => return status,
    };
    if input.is_null() {
        return SEC_E_INVALID_TOKEN;
    }
    // SAFETY: the caller's descriptor: the token is copied now.
    let inputs = unsafe { buffers::copy_inputs(input) };
    let Some(token) = inputs.iter().find(|b| b.kind == SECBUFFER_TOKEN) else {
        return SEC_E_INVALID_TOKEN;
    };
    let word = |i: usize| {
        token
            .data
            .get(i * 4..i * 4 + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let control = match (word(0), word(1), word(2)) {
        (Some(SCHANNEL_SHUTDOWN), ..) => tls::Control::Shutdown,
        (Some(SCHANNEL_ALERT), Some(TLS1_ALERT_FATAL), Some(number)) if number < 256 => {
            tls::Control::Alert(number as u8)
        }
        (Some(SCHANNEL_ALERT), Some(_), Some(_)) => return SEC_E_UNSUPPORTED_FUNCTION,
        (Some(SCHANNEL_RENEGOTIATE), ..) => return SEC_E_UNSUPPORTED_FUNCTION,
        _ => return SEC_E_INVALID_TOKEN,
    };
    session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .apply_control(control)
}

/// FreeContextBuffer.
pub(crate) unsafe extern "win64" fn free_context_buffer(buffer: *mut c_void) -> SECURITY_STATUS {
    thread::require_at_most("FreeContextBuffer", PASSIVE);
    let removed = ksecdd()
        .ksecdd
        .lock()
        .context_buffers
        .remove(&(buffer as usize));
    match removed {
        Some((size, _)) => {
            crate::io::free(buffer as *mut u8, size);
            SEC_E_OK
        }
        None => violation(
            format!(
                "FreeContextBuffer: {:#x} was not allocated by SSPI (or is freed already)",
                buffer as usize
            ),
            buffer as usize,
        ),
    }
}

pub(super) fn utf16_into(dst: &mut [u16], text: &str) {
    for (i, u) in text.encode_utf16().take(dst.len() - 1).enumerate() {
        dst[i] = u;
    }
}

/// QueryContextAttributesW: stream sizes, connection and cipher info, negotiated ALPN, remote
/// certificates (allocated; FreeContextBuffer).
pub(crate) unsafe extern "win64" fn query_context_attributes_w(
    context: *mut SecHandle,
    attribute: u32,
    buffer: *mut c_void,
) -> SECURITY_STATUS {
    thread::require_at_most("QueryContextAttributesW", PASSIVE);
    let (inbound, session) = match self::context(context, "QueryContextAttributesW") {
        Lookup::Found((_, _, inbound, session)) => (inbound, session),
        Lookup::Unknown => return SEC_E_INVALID_HANDLE,
    };
    if buffer.is_null() {
        return SEC_E_INVALID_PARAMETER;
    }
    let session = session.lock().unwrap_or_else(|e| e.into_inner());
    if session.is_handshaking() || session.dead.is_some() && session.suite().is_none() {
        return SEC_E_INVALID_HANDLE;
    }
    let suite = session.suite();
    let name = suite
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let aes256 = name.contains("AES_256");
    let chacha = name.contains("CHACHA20");
    let sha384 = name.contains("SHA384");
    let protocol = creds::protocol_bit(session.version(), inbound);
    match attribute {
        SECPKG_ATTR_STREAM_SIZES => {
            let (header, trailer) = session.framing();
            // SAFETY: the caller's SecPkgContext_StreamSizes.
            unsafe {
                *(buffer as *mut SecPkgContext_StreamSizes) = SecPkgContext_StreamSizes {
                    cbHeader: header as u32,
                    cbTrailer: trailer as u32,
                    cbMaximumMessage: tls::MAX_MESSAGE as u32,
                    cBuffers: 4,
                    cbBlockSize: 1,
                };
            }
        }
        SECPKG_ATTR_CONNECTION_INFO => {
            let info = SecPkgContext_ConnectionInfo {
                dwProtocol: protocol,
                aiCipher: if chacha {
                    0
                } else if aes256 {
                    0x6610
                } else {
                    0x660E
                },
                dwCipherStrength: if aes256 || chacha { 256 } else { 128 },
                aiHash: if sha384 { 0x800D } else { 0x800C },
                dwHashStrength: if sha384 { 384 } else { 256 },
                aiExch: 0xAE06,
                dwExchStrength: 255,
            };
            // SAFETY: the caller's SecPkgContext_ConnectionInfo.
            unsafe { *(buffer as *mut SecPkgContext_ConnectionInfo) = info };
        }
        SECPKG_ATTR_CIPHER_INFO => {
            // SAFETY: SecPkgContext_CipherInfo is plain data; all-zero is valid.
            let mut info: SecPkgContext_CipherInfo = unsafe { std::mem::zeroed() };
            info.dwVersion = 1;
            info.dwProtocol = protocol;
            info.dwCipherSuite = suite.map_or(0, |s| u32::from(u16::from(s.suite())));
            info.dwBaseCipherSuite = info.dwCipherSuite;
            utf16_into(&mut info.szCipherSuite, &name);
            utf16_into(
                &mut info.szCipher,
                if chacha { "CHACHA20_POLY1305" } else { "AES" },
            );
            info.dwCipherLen = if aes256 || chacha { 256 } else { 128 };
            utf16_into(&mut info.szHash, if sha384 { "SHA384" } else { "SHA256" });
            info.dwHashLen = if sha384 { 384 } else { 256 };
            utf16_into(&mut info.szExchange, "ECDHE");
            // SAFETY: the caller's SecPkgContext_CipherInfo.
            unsafe { *(buffer as *mut SecPkgContext_CipherInfo) = info };
        }
        SECPKG_ATTR_APPLICATION_PROTOCOL => {
            // SAFETY: SecPkgContext_ApplicationProtocol is plain data.
            let mut info: SecPkgContext_ApplicationProtocol = unsafe { std::mem::zeroed() };
            if let Some(alpn) = session.alpn() {
                info.ProtoNegoStatus = 1;
                info.ProtoNegoExt = 2;
                info.ProtocolIdSize = alpn.len().min(255) as u8;
                info.ProtocolId[..alpn.len().min(255)]
                    .copy_from_slice(&alpn[..alpn.len().min(255)]);
            }
            // SAFETY: the caller's structure.
            unsafe { *(buffer as *mut SecPkgContext_ApplicationProtocol) = info };
        }
        SECPKG_ATTR_SESSION_INFO => {
            let info = SecPkgContext_SessionInfo {
                dwFlags: if session.resumed() {
                    SSL_SESSION_RECONNECT
                } else {
                    0
                },
                // rustls does not expose the session id; no id is reported.
                cbSessionId: 0,
                rgbSessionId: [0; 32],
            };
            // SAFETY: the caller's SecPkgContext_SessionInfo.
            unsafe { *(buffer as *mut SecPkgContext_SessionInfo) = info };
        }
        SECPKG_ATTR_CERT_CHECK_RESULT_INPROC if inbound => {
            // The verdict on the client's chain (ASC_REQ_MUTUAL_AUTH completes without one).
            let chain: Vec<rustls::pki_types::CertificateDer<'static>> = session
                .peer_certificates()
                .into_iter()
                .map(rustls::pki_types::CertificateDer::from)
                .collect();
            if chain.is_empty() {
                return SEC_E_NO_CREDENTIALS;
            }
            let verdict = creds::client_certificate_verdict(ksecdd().ksecdd.store(), &chain);
            // SAFETY: the caller's SecPkgContext_CertificateValidationResult.
            unsafe { *(buffer as *mut SecPkgContext_CertificateValidationResult) = verdict };
        }
        SECPKG_ATTR_REMOTE_CERTIFICATES => {
            let certs = session.peer_certificates();
            let mut chain = Vec::new();
            for c in &certs {
                chain.extend_from_slice(&(c.len() as u32).to_le_bytes());
                chain.extend_from_slice(c);
            }
            let p = if chain.is_empty() {
                0
            } else {
                allocate_context_buffer(&chain)
            };
            // SAFETY: the caller's SecPkgContext_Certificates.
            unsafe {
                *(buffer as *mut SecPkgContext_Certificates) = SecPkgContext_Certificates {
                    cCertificates: certs.len() as u32,
                    cbCertificateChain: chain.len() as u32,
                    pbCertificateChain: p as *mut u8,
                };
            }
        }
        _ => return SEC_E_UNSUPPORTED_FUNCTION,
    }
    SEC_E_OK
}
