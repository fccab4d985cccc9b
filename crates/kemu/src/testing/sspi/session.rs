//! One TLS session through kernel Schannel, handshaken and used the way a driver does.

use super::*;

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

pub(super) const CLIENT_REQUIREMENTS: u64 = ISC_REQ_REPLAY_DETECT
    | ISC_REQ_SEQUENCE_DETECT
    | ISC_REQ_CONFIDENTIALITY
    | ISC_REQ_EXTENDED_ERROR
    | ISC_REQ_STREAM;
pub(super) const SERVER_REQUIREMENTS: u64 = ASC_REQ_REPLAY_DETECT
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

pub(super) fn read_more(io: &mut impl Read, into: &mut Vec<u8>) -> Result<(), SECURITY_STATUS> {
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
