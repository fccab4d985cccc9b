//! An SSPI client written the way a driver uses kernel Schannel, for kemu's tests and
//! benchmarks: each asynchronous call's callback signals an event the issuing thread waits on;
//! handshake buffers are the caller's own; records are encrypted and decrypted in place. Every
//! function must run on a kernel thread after `exports::bind_native(IMPORT_DIRECTORY)`.

#![allow(missing_docs)]

use std::ffi::c_void;
use std::io::{Read, Write};

use ksys::imports::*;
use ksys::io::{EXECUTIVE, KERNEL_MODE, KEVENT, SYNCHRONIZATION_EVENT};
use ksys::ntdef::UNICODE_STRING;
use ksys::schannel::*;
use ksys::sspi::*;

use crate::Thumbprint;

/// Size of the handshake output buffer the client supplies.
pub const TOKEN_BUFFER: usize = 64 * 1024;

unsafe extern "win64" fn notify(_context: *mut SspiAsyncContext, data: *mut c_void) {
    // SAFETY: `data` is the live event of the `Async` that registered this callback.
    unsafe { KeSetEvent(data as *mut KEVENT, 0, 0) };
}

/// One async context with its completion event.
pub struct Async {
    pub context: *mut SspiAsyncContext,
    event: Box<KEVENT>,
}

impl Async {
    pub fn new() -> Async {
        // SAFETY: plain SSPI and event calls at PASSIVE_LEVEL.
        unsafe {
            let context = SspiCreateAsyncContext();
            assert!(!context.is_null());
            let mut event: Box<KEVENT> = Box::new(std::mem::zeroed());
            KeInitializeEvent(&mut *event, SYNCHRONIZATION_EVENT, 0);
            assert_eq!(
                SspiSetAsyncNotifyCallback(
                    context,
                    Some(notify),
                    &mut *event as *mut KEVENT as *mut c_void
                ),
                SEC_E_OK
            );
            Async { context, event }
        }
    }

    /// Runs one async call: queues it, waits for the callback, returns the call status
    /// (or the queueing error, with no callback expected).
    pub fn call(
        &mut self,
        f: impl FnOnce(*mut SspiAsyncContext) -> SECURITY_STATUS,
    ) -> SECURITY_STATUS {
        let queued = f(self.context);
        if queued != SEC_E_OK {
            return queued;
        }
        // SAFETY: our event; the callback sets it exactly once per call.
        unsafe {
            KeWaitForSingleObject(
                &mut *self.event as *mut KEVENT as *mut c_void,
                EXECUTIVE,
                KERNEL_MODE,
                0,
                std::ptr::null(),
            );
            SspiGetAsyncCallStatus(self.context)
        }
    }
}

impl Default for Async {
    fn default() -> Self {
        Async::new()
    }
}

impl Drop for Async {
    fn drop(&mut self) {
        // SAFETY: no call is pending (every `call` waited for its callback).
        unsafe { SspiFreeAsyncContext(self.context) };
    }
}

fn unicode(units: &[u16]) -> UNICODE_STRING {
    UNICODE_STRING {
        Length: (units.len() * 2) as u16,
        MaximumLength: (units.len() * 2) as u16,
        Buffer: units.as_ptr() as *mut u16,
    }
}

/// What a credential asks for.
#[derive(Debug, Clone, Default)]
pub struct CredentialSpec {
    pub inbound: bool,
    pub thumbprint: Option<Thumbprint>,
    pub flags: u32,
    pub disabled_protocols: u32,
}

/// SspiAcquireCredentialsHandleAsyncW with SCH_CREDENTIALS v5 / CERT_HASH_STORE.
pub fn acquire(spec: &CredentialSpec) -> Result<SecHandle, SECURITY_STATUS> {
    let mut hash = SCHANNEL_CERT_HASH_STORE {
        dwLength: SCHANNEL_CERT_HASH_STORE_SIZE,
        dwFlags: SCH_MACHINE_CERT_HASH,
        hProv: 0,
        ShaHash: [0; 20],
        pwszStoreName: [0; SCH_CRED_MAX_STORE_NAME_SIZE],
    };
    hash.pwszStoreName[0] = u16::from(b'M');
    hash.pwszStoreName[1] = u16::from(b'Y');
    let mut tls = TLS_PARAMETERS {
        cAlpnIds: 0,
        rgstrAlpnIds: std::ptr::null_mut(),
        // Everything below TLS 1.2 is always disabled explicitly (0 means system defaults).
        grbitDisabledProtocols: spec.disabled_protocols | SP_PROT_BELOW_TLS1_2,
        cDisabledCrypto: 0,
        pDisabledCrypto: std::ptr::null_mut(),
        dwFlags: 0,
    };
    let mut creds = SCH_CREDENTIALS {
        dwVersion: SCH_CREDENTIALS_VERSION,
        dwCredFormat: SCH_CRED_FORMAT_CERT_HASH_STORE,
        cCreds: 0,
        paCred: std::ptr::null_mut(),
        hRootStore: std::ptr::null_mut(),
        cMappers: 0,
        aphMappers: std::ptr::null_mut(),
        dwSessionLifespan: 0,
        // Clients never fall back to a default certificate (as MsQuic and curl set it).
        dwFlags: spec.flags
            | if spec.inbound {
                0
            } else {
                SCH_CRED_NO_DEFAULT_CREDS
            },
        cTlsParameters: 1,
        pTlsParameters: &mut tls,
    };
    if let Some(t) = spec.thumbprint {
        hash.ShaHash = t.0;
        creds.cCreds = 1;
        creds.paCred = &mut hash as *mut _ as *mut c_void;
    }
    let package: Vec<u16> = "Schannel".encode_utf16().collect();
    let package = unicode(&package);
    let mut handle = SecHandle::INVALID;
    let mut expiry: TimeStamp = 0;
    let mut a = Async::new();
    let use_ = if spec.inbound {
        SECPKG_CRED_INBOUND
    } else {
        SECPKG_CRED_OUTBOUND
    };
    // SAFETY: every structure outlives the call (we wait for the callback).
    let status = a.call(|ctx| unsafe {
        SspiAcquireCredentialsHandleAsyncW(
            ctx,
            std::ptr::null(),
            &package,
            use_,
            std::ptr::null_mut(),
            &mut creds as *mut _ as *mut c_void,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut handle,
            &mut expiry,
        )
    });
    if status == SEC_E_OK {
        Ok(handle)
    } else {
        Err(status)
    }
}

/// TLS_PARAMETERS disabling exactly `disabled` (no ALPN).
pub fn client_tls_parameters(disabled: u32) -> TLS_PARAMETERS {
    TLS_PARAMETERS {
        cAlpnIds: 0,
        rgstrAlpnIds: std::ptr::null_mut(),
        grbitDisabledProtocols: disabled,
        cDisabledCrypto: 0,
        pDisabledCrypto: std::ptr::null_mut(),
        dwFlags: 0,
    }
}

/// A client SCH_CREDENTIALS (no certificate) over `tls`.
pub fn client_credentials(tls: &mut TLS_PARAMETERS) -> SCH_CREDENTIALS {
    SCH_CREDENTIALS {
        dwVersion: SCH_CREDENTIALS_VERSION,
        dwCredFormat: 0,
        cCreds: 0,
        paCred: std::ptr::null_mut(),
        hRootStore: std::ptr::null_mut(),
        cMappers: 0,
        aphMappers: std::ptr::null_mut(),
        dwSessionLifespan: 0,
        dwFlags: SCH_CRED_NO_DEFAULT_CREDS,
        cTlsParameters: 1,
        pTlsParameters: tls,
    }
}

/// An outbound SspiAcquireCredentialsHandleAsyncW with the caller's auth data as it is.
///
/// # Safety
/// `auth` must be NULL or point to an SCH_CREDENTIALS whose pointers are valid for the call.
pub unsafe fn acquire_raw(auth: *mut c_void) -> Result<SecHandle, SECURITY_STATUS> {
    let package: Vec<u16> = "Schannel".encode_utf16().collect();
    let package = unicode(&package);
    let mut handle = SecHandle::INVALID;
    let mut a = Async::new();
    // SAFETY: the structures outlive the call (we wait for the callback); `auth` is the
    // caller's to vouch for.
    let status = a.call(|ctx| unsafe {
        SspiAcquireCredentialsHandleAsyncW(
            ctx,
            std::ptr::null(),
            &package,
            SECPKG_CRED_OUTBOUND,
            std::ptr::null_mut(),
            auth,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut handle,
            std::ptr::null_mut(),
        )
    });
    if status == SEC_E_OK {
        Ok(handle)
    } else {
        Err(status)
    }
}

/// Frees a credential (synchronously, as MsQuic does).
pub fn free_credential(mut handle: SecHandle) {
    // SAFETY: a handle from `acquire`.
    assert_eq!(unsafe { FreeCredentialsHandle(&mut handle) }, SEC_E_OK);
}

/// SEC_APPLICATION_PROTOCOLS for an ALPN list.
pub fn alpn_blob(ids: &[&str]) -> Vec<u8> {
    let mut wire = Vec::new();
    for id in ids {
        wire.push(id.len() as u8);
        wire.extend_from_slice(id.as_bytes());
    }
    let mut blob = Vec::new();
    blob.extend_from_slice(&((6 + wire.len()) as u32).to_le_bytes());
    blob.extend_from_slice(&2i32.to_le_bytes());
    blob.extend_from_slice(&(wire.len() as u16).to_le_bytes());
    blob.extend_from_slice(&wire);
    blob
}

/// Outcome of one ISC/ASC step.
#[derive(Debug)]
pub struct Step {
    pub status: SECURITY_STATUS,
    pub output: Vec<u8>,
    /// Trailing input bytes not consumed (SECBUFFER_EXTRA).
    pub extra: usize,
    /// SEC_E_INCOMPLETE_MESSAGE: bytes missing (SECBUFFER_MISSING).
    pub missing: usize,
    /// The output TOKEN's cbBuffer as the call left it (the size needed when it was too small).
    pub needed: usize,
}

/// One TLS session through kernel Schannel.
pub struct Tls {
    pub credential: SecHandle,
    pub context: Option<SecHandle>,
    pub inbound: bool,
    target: Vec<u16>,
    alpn: Vec<u8>,
    requirements: u32,
    async_context: Async,
    /// Received bytes not yet consumed.
    pub incoming: Vec<u8>,
    sizes: SecPkgContext_StreamSizes,
}

const CLIENT_REQUIREMENTS: u64 = ISC_REQ_REPLAY_DETECT
    | ISC_REQ_SEQUENCE_DETECT
    | ISC_REQ_CONFIDENTIALITY
    | ISC_REQ_EXTENDED_ERROR
    | ISC_REQ_STREAM;
const SERVER_REQUIREMENTS: u64 = ASC_REQ_REPLAY_DETECT
    | ASC_REQ_SEQUENCE_DETECT
    | ASC_REQ_CONFIDENTIALITY
    | ASC_REQ_EXTENDED_ERROR
    | ASC_REQ_STREAM;

impl Tls {
    pub fn client(
        credential: SecHandle,
        target: &str,
        alpn: &[&str],
        extra_requirements: u32,
    ) -> Tls {
        Tls::new(
            credential,
            false,
            target,
            alpn,
            CLIENT_REQUIREMENTS as u32 | extra_requirements,
        )
    }

    pub fn server(credential: SecHandle, alpn: &[&str], extra_requirements: u32) -> Tls {
        Tls::new(
            credential,
            true,
            "",
            alpn,
            SERVER_REQUIREMENTS as u32 | extra_requirements,
        )
    }

    fn new(
        credential: SecHandle,
        inbound: bool,
        target: &str,
        alpn: &[&str],
        requirements: u32,
    ) -> Tls {
        Tls {
            credential,
            context: None,
            inbound,
            target: target.encode_utf16().collect(),
            alpn: if alpn.is_empty() {
                Vec::new()
            } else {
                alpn_blob(alpn)
            },
            requirements,
            async_context: Async::new(),
            incoming: Vec::new(),
            sizes: SecPkgContext_StreamSizes {
                cbHeader: 0,
                cbTrailer: 0,
                cbMaximumMessage: 0,
                cBuffers: 0,
                cbBlockSize: 0,
            },
        }
    }

    /// One ISC/ASC call over `input`.
    pub fn step(&mut self, input: &[u8]) -> Step {
        self.step_sized(input, TOKEN_BUFFER)
    }

    /// One ISC/ASC call over `input` with an output TOKEN of `capacity` bytes.
    pub fn step_sized(&mut self, input: &[u8], capacity: usize) -> Step {
        let mut token = input.to_vec();
        let mut alpn = self.alpn.clone();
        let mut in_buffers = vec![
            SecBuffer::new(
                SECBUFFER_TOKEN,
                token.as_mut_ptr() as *mut c_void,
                token.len() as u32,
            ),
            SecBuffer::EMPTY,
        ];
        if !alpn.is_empty() && (self.inbound || self.context.is_none()) {
            in_buffers.push(SecBuffer::new(
                SECBUFFER_APPLICATION_PROTOCOLS,
                alpn.as_mut_ptr() as *mut c_void,
                alpn.len() as u32,
            ));
        }
        let mut in_desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: in_buffers.len() as u32,
            pBuffers: in_buffers.as_mut_ptr(),
        };
        let mut out_token = vec![0u8; capacity];
        let mut alert = [0u8; 64];
        let mut out_buffers = [
            SecBuffer::new(
                SECBUFFER_TOKEN,
                out_token.as_mut_ptr() as *mut c_void,
                capacity as u32,
            ),
            SecBuffer::new(SECBUFFER_ALERT, alert.as_mut_ptr() as *mut c_void, 64),
            SecBuffer::EMPTY,
        ];
        let mut out_desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 3,
            pBuffers: out_buffers.as_mut_ptr(),
        };
        let mut new_context = SecHandle::INVALID;
        let mut attributes = 0u32;
        let mut expiry: TimeStamp = 0;
        let target = unicode(&self.target);
        let mut credential = self.credential;
        let mut existing = self.context.unwrap_or(SecHandle::INVALID);
        let context_ptr: *mut SecHandle = if self.context.is_some() {
            &mut existing
        } else {
            std::ptr::null_mut()
        };
        let input_desc: *mut SecBufferDesc =
            if input.is_empty() && self.context.is_none() && !self.inbound && alpn.is_empty() {
                std::ptr::null_mut()
            } else {
                &mut in_desc
            };
        let (inbound, requirements) = (self.inbound, self.requirements);
        // SAFETY: every buffer and out-parameter lives until `call` returns (after the callback).
        let status = self.async_context.call(|ctx| unsafe {
            if inbound {
                SspiAcceptSecurityContextAsync(
                    ctx,
                    &mut credential,
                    context_ptr,
                    input_desc,
                    requirements,
                    0,
                    &mut new_context,
                    &mut out_desc,
                    &mut attributes,
                    &mut expiry,
                )
            } else {
                SspiInitializeSecurityContextAsyncW(
                    ctx,
                    &mut credential,
                    context_ptr,
                    &target,
                    requirements,
                    0,
                    SECURITY_NATIVE_DREP,
                    input_desc,
                    0,
                    &mut new_context,
                    &mut out_desc,
                    &mut attributes,
                    &mut expiry,
                )
            }
        });
        if new_context.is_valid() {
            self.context = Some(new_context);
        }
        let needed = out_buffers[0].cbBuffer as usize;
        let output = out_token[..needed.min(capacity)].to_vec();
        let (mut extra, mut missing) = (0, 0);
        for b in &in_buffers {
            match b.kind() {
                SECBUFFER_EXTRA => extra = b.cbBuffer as usize,
                SECBUFFER_MISSING => missing = b.cbBuffer as usize,
                _ => {}
            }
        }
        Step {
            status,
            output,
            extra,
            missing,
            needed,
        }
    }

    /// Runs the whole handshake over `io`; Err is the failing status.
    pub fn handshake(&mut self, io: &mut (impl Read + Write)) -> Result<(), SECURITY_STATUS> {
        let mut pending: Vec<u8> = std::mem::take(&mut self.incoming);
        let mut first = !self.inbound;
        loop {
            if !first && pending.is_empty() {
                read_more(io, &mut pending)?;
            }
            let step = self.step(if first { &[] } else { &pending });
            first = false;
            if !step.output.is_empty() {
                io.write_all(&step.output)
                    .map_err(|_| SEC_E_INTERNAL_ERROR)?;
            }
            match step.status {
                SEC_E_OK => {
                    self.incoming = pending.split_off(pending.len() - step.extra);
                    // SAFETY: an established context and our structure.
                    let status = unsafe {
                        QueryContextAttributesW(
                            self.context.as_mut().unwrap(),
                            SECPKG_ATTR_STREAM_SIZES,
                            &mut self.sizes as *mut _ as *mut c_void,
                        )
                    };
                    return if status == SEC_E_OK {
                        Ok(())
                    } else {
                        Err(status)
                    };
                }
                SEC_I_CONTINUE_NEEDED => pending = pending.split_off(pending.len() - step.extra),
                SEC_E_INCOMPLETE_MESSAGE => read_more(io, &mut pending)?,
                error => return Err(error),
            }
        }
    }

    pub fn sizes(&self) -> SecPkgContext_StreamSizes {
        self.sizes
    }

    fn established(&mut self) -> Result<(), SECURITY_STATUS> {
        // SAFETY: an established context and our structure.
        let status = unsafe {
            QueryContextAttributesW(
                self.context.as_mut().unwrap(),
                SECPKG_ATTR_STREAM_SIZES,
                &mut self.sizes as *mut _ as *mut c_void,
            )
        };
        if status == SEC_E_OK {
            Ok(())
        } else {
            Err(status)
        }
    }

    /// Handshakes a client and a server session with each other in memory (no sockets).
    pub fn pump_handshake(client: &mut Tls, server: &mut Tls) -> Result<(), SECURITY_STATUS> {
        let first = client.step(&[]);
        if first.status != SEC_I_CONTINUE_NEEDED {
            return Err(first.status);
        }
        let mut to_server = first.output;
        let mut client_done = false;
        for _ in 0..16 {
            let s = server.step(&to_server);
            if s.status.is_error() {
                return Err(s.status);
            }
            let server_done = s.status == SEC_E_OK;
            if client_done && server_done {
                client.incoming = s.output;
                client.established()?;
                return server.established();
            }
            let c = client.step(&s.output);
            if c.status.is_error() {
                return Err(c.status);
            }
            client_done = c.status == SEC_E_OK;
            to_server = c.output;
            if client_done && server_done {
                client.established()?;
                return server.established();
            }
        }
        Err(SEC_E_INTERNAL_ERROR)
    }

    /// Encrypts `data` into records (one EncryptMessage per ≤ cbMaximumMessage chunk).
    pub fn encrypt(&mut self, data: &[u8]) -> Result<Vec<u8>, SECURITY_STATUS> {
        let mut wire = Vec::with_capacity(data.len() + 64);
        for chunk in data.chunks(self.sizes.cbMaximumMessage as usize) {
            self.encrypt_one(chunk, 0, &mut wire)?;
        }
        Ok(wire)
    }

    /// Encrypts a close_notify (EncryptMessage with SECQOP_WRAP_OOB_DATA and {1, 0}).
    pub fn close_notify(&mut self) -> Result<Vec<u8>, SECURITY_STATUS> {
        let mut wire = Vec::new();
        self.encrypt_one(&[1, 0], 0x4000_0000, &mut wire)?;
        Ok(wire)
    }

    fn encrypt_one(
        &mut self,
        chunk: &[u8],
        qop: u32,
        wire: &mut Vec<u8>,
    ) -> Result<(), SECURITY_STATUS> {
        let (h, t) = (self.sizes.cbHeader as usize, self.sizes.cbTrailer as usize);
        let start = wire.len();
        wire.resize(start + h + chunk.len() + t, 0);
        wire[start + h..start + h + chunk.len()].copy_from_slice(chunk);
        // SAFETY: the three regions lie inside the bytes just appended to `wire`.
        let mut bufs = unsafe {
            let base = wire.as_mut_ptr().add(start);
            [
                SecBuffer::new(SECBUFFER_STREAM_HEADER, base as *mut c_void, h as u32),
                SecBuffer::new(
                    SECBUFFER_DATA,
                    base.add(h) as *mut c_void,
                    chunk.len() as u32,
                ),
                SecBuffer::new(
                    SECBUFFER_STREAM_TRAILER,
                    base.add(h + chunk.len()) as *mut c_void,
                    t as u32,
                ),
                SecBuffer::EMPTY,
            ]
        };
        let mut desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 4,
            pBuffers: bufs.as_mut_ptr(),
        };
        // SAFETY: an established context; the descriptor and buffers outlive the call.
        let status = unsafe { EncryptMessage(self.context.as_mut().unwrap(), qop, &mut desc, 0) };
        if status != SEC_E_OK {
            wire.truncate(start);
            return Err(status);
        }
        wire.truncate(start + (bufs[0].cbBuffer + bufs[1].cbBuffer + bufs[2].cbBuffer) as usize);
        Ok(())
    }

    /// Decrypts what `incoming` holds (in place): Ok(Some(plaintext)) (maybe empty), Ok(None)
    /// at close_notify, or Err(SEC_E_INCOMPLETE_MESSAGE) when more bytes are needed.
    pub fn decrypt_buffered(&mut self) -> Result<Option<Vec<u8>>, SECURITY_STATUS> {
        let base = self.incoming.as_mut_ptr();
        let total = self.incoming.len();
        let mut bufs = [
            SecBuffer::new(SECBUFFER_DATA, base as *mut c_void, total as u32),
            SecBuffer::EMPTY,
            SecBuffer::EMPTY,
            SecBuffer::EMPTY,
        ];
        let mut desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 4,
            pBuffers: bufs.as_mut_ptr(),
        };
        // SAFETY: an established context; `incoming` outlives the call and is not moved.
        let status = unsafe {
            DecryptMessage(
                self.context.as_mut().unwrap(),
                &mut desc,
                0,
                std::ptr::null_mut(),
            )
        };
        let offset = |b: &SecBuffer| b.pvBuffer as usize - base as usize;
        let extra_at = bufs
            .iter()
            .find(|b| b.kind() == SECBUFFER_EXTRA)
            .map(offset);
        let plain = bufs
            .iter()
            .find(|b| b.kind() == SECBUFFER_DATA && status == SEC_E_OK)
            .map(|b| self.incoming[offset(b)..offset(b) + b.cbBuffer as usize].to_vec());
        let keep_extra = |incoming: &mut Vec<u8>| match extra_at {
            Some(at) => {
                incoming.drain(..at);
            }
            None => incoming.clear(),
        };
        match status {
            SEC_E_OK => {
                keep_extra(&mut self.incoming);
                Ok(Some(plain.unwrap_or_default()))
            }
            SEC_E_INCOMPLETE_MESSAGE => Err(SEC_E_INCOMPLETE_MESSAGE),
            SEC_I_CONTEXT_EXPIRED => {
                keep_extra(&mut self.incoming);
                Ok(None)
            }
            SEC_I_RENEGOTIATE => {
                // EXTRA starts with the post-handshake message: `incoming` keeps it for the
                // ISC/ASC call that answers it.
                keep_extra(&mut self.incoming);
                Err(SEC_I_RENEGOTIATE)
            }
            other => Err(other),
        }
    }

    /// Reads until some plaintext (or close_notify: None, or the peer's TCP close: Err).
    pub fn read(
        &mut self,
        io: &mut (impl Read + Write),
    ) -> Result<Option<Vec<u8>>, SECURITY_STATUS> {
        loop {
            if !self.incoming.is_empty() {
                match self.decrypt_buffered() {
                    Ok(Some(p)) if p.is_empty() => continue,
                    Ok(other) => return Ok(other),
                    Err(SEC_E_INCOMPLETE_MESSAGE) => {}
                    Err(SEC_I_RENEGOTIATE) => {
                        self.answer_post_handshake(io)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            read_more(io, &mut self.incoming)?;
        }
    }

    /// After SEC_I_RENEGOTIATE: ISC/ASC with the EXTRA DecryptMessage returned as input TOKEN,
    /// its output (a KeyUpdate answer) sent, its EXTRA kept for decrypting.
    pub fn answer_post_handshake(&mut self, io: &mut impl Write) -> Result<(), SECURITY_STATUS> {
        let input = std::mem::take(&mut self.incoming);
        let step = self.step(&input);
        if !step.output.is_empty() {
            io.write_all(&step.output)
                .map_err(|_| SEC_E_INTERNAL_ERROR)?;
        }
        if step.status != SEC_E_OK {
            return Err(step.status);
        }
        self.incoming = input[input.len() - step.extra.min(input.len())..].to_vec();
        Ok(())
    }

    /// DeleteSecurityContext (if one was created).
    pub fn delete(&mut self) {
        if let Some(mut c) = self.context.take() {
            // SAFETY: a context this session created.
            assert_eq!(unsafe { DeleteSecurityContext(&mut c) }, SEC_E_OK);
        }
    }

    /// QueryContextAttributesW into a plain structure.
    pub fn query<T>(&mut self, attribute: u32) -> Result<T, SECURITY_STATUS> {
        // SAFETY: T is the plain-data structure the attribute fills.
        let mut out: T = unsafe { std::mem::zeroed() };
        // SAFETY: an established context; `out` is large enough for the attribute.
        let status = unsafe {
            QueryContextAttributesW(
                self.context.as_mut().unwrap(),
                attribute,
                &mut out as *mut T as *mut c_void,
            )
        };
        if status == SEC_E_OK {
            Ok(out)
        } else {
            Err(status)
        }
    }
}

fn read_more(io: &mut impl Read, into: &mut Vec<u8>) -> Result<(), SECURITY_STATUS> {
    let mut buf = [0u8; 16 * 1024];
    match io.read(&mut buf) {
        Ok(0) => Err(SEC_E_CONTEXT_EXPIRED),
        Ok(n) => {
            into.extend_from_slice(&buf[..n]);
            Ok(())
        }
        Err(_) => Err(SEC_E_INTERNAL_ERROR),
    }
}
