//! An SSPI security context and every call made on it, typed: the asynchronous ISC/ASC steps
//! of a handshake (with the storage they write at completion), attribute queries that return
//! their structures, DecryptMessage and EncryptMessage in place on slices, and deletion. The
//! session's state machine calls these instead of SSPI.

use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ffi::c_void;

use ksys::imports::*;
use ksys::ntdef::{NTSTATUS, UNICODE_STRING};
use ksys::schannel::{
    SecPkgContext_CertificateValidationResult, SecPkgContext_Certificates,
    SecPkgContext_CipherInfo, SecPkgContext_ConnectionInfo,
};
use ksys::sspi::*;

use crate::credential::Credential;
use crate::pool::PoolArc;
use crate::sspi::AsyncOp;
use crate::wsk::{Buffer, Loan};

/// Room for an alert SSPI may return separately from the token.
const ALERT_CAPACITY: usize = 64;

/// One ISC (client) or ASC (server) step.
pub(crate) struct Step<'a> {
    /// AcceptSecurityContext (server) or InitializeSecurityContext (client).
    pub server: bool,
    /// The credential the context is made with (the call keeps it until its callback).
    pub credential: &'a PoolArc<Credential>,
    /// What the peer sent: the first `input_len` bytes of `input` (lent to the call).
    pub input: &'a Buffer,
    /// How many bytes of `input` are the peer's.
    pub input_len: usize,
    /// A client's first call: no input descriptor at all, unless ALPN is offered.
    pub first_client_call: bool,
    /// Offer (client) or accept (server) the context's ALPN list, if it has one.
    pub offer_alpn: bool,
    /// Where the output token goes (lent to the call, all of it).
    pub output: &'a Buffer,
    /// Server: ask for a client certificate (ASC_REQ_MUTUAL_AUTH).
    pub mutual_auth: bool,
    /// Client: go on without a client certificate after SEC_I_INCOMPLETE_CREDENTIALS.
    pub use_supplied_credentials: bool,
}

/// Why a step was not issued (no callback will come).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepFailure {
    /// No asynchronous context could be readied, or a buffer could not be lent.
    NotReady(SECURITY_STATUS),
    /// ISC/ASC refused to queue the call.
    Refused(SECURITY_STATUS),
}

/// What a finished step produced.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepResult {
    /// Bytes of output token written (or, with SEC_E_BUFFER_TOO_SMALL, the room needed).
    pub written: usize,
    /// Bytes at the end of the input Schannel did not use (SECBUFFER_EXTRA).
    pub extra: Option<usize>,
}

/// The storage one ISC/ASC call reads and writes until its callback.
struct Call {
    input: [SecBuffer; 3],
    input_desc: SecBufferDesc,
    output: [SecBuffer; 3],
    output_desc: SecBufferDesc,
    new_context: SecHandle,
    attributes: u32,
    expiry: TimeStamp,
    target: UNICODE_STRING,
    alert: [u8; ALERT_CAPACITY],
    /// What the call has: the input and output ranges, the credential.
    input_loan: Option<Loan>,
    output_loan: Option<Loan>,
    credential: Option<PoolArc<Credential>>,
}

/// Everything of a context SSPI may point into: the handle, the call storage, the target name
/// and the ALPN list. It lives in its own pool block, so it does not move with its owner.
struct State {
    handle: SecHandle,
    call: Call,
    /// The target name (SNI and the name validated), UTF-16 without NUL; may be empty.
    target: Vec<u16>,
    /// SEC_APPLICATION_PROTOCOLS to offer or accept, empty for none.
    alpn: Vec<u8>,
}

impl Call {
    /// Gives back what a finished (or never issued) step had.
    fn release(&mut self) {
        self.input_loan = None;
        self.output_loan = None;
        self.credential = None;
    }
}

/// The pool block holding a context's [`State`].
struct Block(UnsafeCell<State>);

// SAFETY: SSPI handles are usable from any thread; the state is reached only through the one
// SecurityContext that owns the block (by `&mut`), and by SSPI during a step it issued.
unsafe impl Send for Block {}
// SAFETY: as above.
unsafe impl Sync for Block {}

/// What DecryptMessage made of a buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Decrypted {
    /// SEC_E_OK, SEC_I_RENEGOTIATE, SEC_I_CONTEXT_EXPIRED, SEC_E_INCOMPLETE_MESSAGE or a failure.
    pub status: SECURITY_STATUS,
    /// The first SECBUFFER_DATA: offset into the buffer (as Schannel's pointer says, unchecked)
    /// and length.
    pub data: Option<(usize, usize)>,
    /// The first SECBUFFER_DATA that is not empty.
    pub nonempty_data: Option<(usize, usize)>,
    /// Bytes at the end of the buffer that belong to the next record (SECBUFFER_EXTRA).
    pub extra: Option<usize>,
}

/// A security context: none until the first step creates one; deleted by [`Self::delete`] or
/// [`Self::delete_async`] (at PASSIVE_LEVEL, by its owner), never by a completion.
///
/// A step in flight owns what SSPI reads and writes (the buffers' loans, the credential, the
/// call storage in the context's own pool block); until [`Self::finish_step`] sees its
/// callback came, every other call on the context fails instead of touching that storage, and
/// a context dropped meanwhile leaves its block to SSPI.
pub(crate) struct SecurityContext {
    block: PoolArc<Block>,
    /// The asynchronous context of the step in flight, if one is.
    in_flight: Option<*mut SspiAsyncContext>,
}

// SAFETY: the async-context pointer is only compared, never dereferenced here; the block is
// Send and Sync.
unsafe impl Send for SecurityContext {}

impl Drop for SecurityContext {
    fn drop(&mut self) {
        if self.in_flight.is_some() {
            // SSPI may still write into the block: it is never freed.
            core::mem::forget(self.block.clone());
        }
    }
}

impl SecurityContext {
    /// No context yet, for `target` (UTF-16 without NUL; empty for none) and `alpn` (the
    /// SEC_APPLICATION_PROTOCOLS blob; empty for none).
    pub fn try_new(target: Vec<u16>, alpn: Vec<u8>) -> Result<SecurityContext, NTSTATUS> {
        let state = State {
            handle: SecHandle::INVALID,
            target,
            alpn,
            call: Call {
                input: [SecBuffer::EMPTY; 3],
                input_desc: SecBufferDesc {
                    ulVersion: SECBUFFER_VERSION,
                    cBuffers: 0,
                    pBuffers: core::ptr::null_mut(),
                },
                output: [SecBuffer::EMPTY; 3],
                output_desc: SecBufferDesc {
                    ulVersion: SECBUFFER_VERSION,
                    cBuffers: 0,
                    pBuffers: core::ptr::null_mut(),
                },
                new_context: SecHandle::INVALID,
                attributes: 0,
                expiry: 0,
                target: UNICODE_STRING {
                    Length: 0,
                    MaximumLength: 0,
                    Buffer: core::ptr::null_mut(),
                },
                alert: [0; ALERT_CAPACITY],
                input_loan: None,
                output_loan: None,
                credential: None,
            },
        };
        Ok(SecurityContext {
            block: PoolArc::try_new(Block(UnsafeCell::new(state)))?,
            in_flight: None,
        })
    }

    /// The state, unless a step is in flight (SSPI's then).
    fn state(&mut self) -> Option<&mut State> {
        if self.in_flight.is_some() {
            return None;
        }
        // SAFETY: this context is the block's only user (`&mut self`), and no step is in
        // flight, so SSPI does not touch it either.
        Some(unsafe { &mut *self.block.0.get() })
    }


    /// Whether a context exists (a step created it and it was not deleted).
    pub fn is_valid(&mut self) -> bool {
        self.state().is_some_and(|s| s.handle.is_valid())
    }

    /// Issues one asynchronous ISC or ASC step on `op`: Ok if its callback will come. The step
    /// has its buffers, the credential and this context's storage until [`Self::finish_step`]
    /// sees the callback came.
    pub fn start_step(&mut self, op: &mut AsyncOp, step: &Step<'_>) -> Result<(), StepFailure> {
        if self.in_flight.is_some() {
            return Err(StepFailure::NotReady(SEC_E_INTERNAL_ERROR));
        }
        let not_ready = |_| StepFailure::NotReady(SEC_E_INSUFFICIENT_MEMORY);
        let input_loan = step.input.lend(0, step.input_len).map_err(not_ready)?;
        let output_loan = step.output.lend(0, step.output.len()).map_err(not_ready)?;
        let async_context = op.begin().map_err(StepFailure::NotReady)?;
        let Some(state) = self.state() else {
            return Err(StepFailure::NotReady(SEC_E_INTERNAL_ERROR));
        };
        let offer_alpn = step.offer_alpn && !state.alpn.is_empty();
        let alpn = (state.alpn.as_mut_ptr(), state.alpn.len());
        let target = &mut state.target;
        let c = &mut state.call;
        c.input = [
            SecBuffer::new(
                SECBUFFER_TOKEN,
                input_loan.as_ptr() as *mut c_void,
                input_loan.len() as u32,
            ),
            SecBuffer::EMPTY,
            SecBuffer::EMPTY,
        ];
        let mut inputs = 2;
        if offer_alpn {
            c.input[2] = SecBuffer::new(
                SECBUFFER_APPLICATION_PROTOCOLS,
                alpn.0 as *mut c_void,
                alpn.1 as u32,
            );
            inputs = 3;
        }
        c.input_desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: inputs,
            pBuffers: c.input.as_mut_ptr(),
        };
        c.output = [
            SecBuffer::new(
                SECBUFFER_TOKEN,
                output_loan.as_ptr() as *mut c_void,
                output_loan.len() as u32,
            ),
            SecBuffer::new(
                SECBUFFER_ALERT,
                c.alert.as_mut_ptr() as *mut c_void,
                ALERT_CAPACITY as u32,
            ),
            SecBuffer::EMPTY,
        ];
        c.output_desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 3,
            pBuffers: c.output.as_mut_ptr(),
        };
        c.new_context = SecHandle::INVALID;
        c.attributes = 0;
        c.expiry = 0;
        // No name is an empty string {0, 0, NULL} (never a NULL UNICODE_STRING, and never an
        // empty slice's dangling pointer).
        c.target = UNICODE_STRING {
            Length: (target.len() * 2) as u16,
            MaximumLength: (target.len() * 2) as u16,
            Buffer: if target.is_empty() {
                core::ptr::null_mut()
            } else {
                target.as_mut_ptr()
            },
        };
        let existing: *mut SecHandle = if state.handle.is_valid() {
            &mut state.handle
        } else {
            core::ptr::null_mut()
        };
        let c = &mut state.call;
        // The call has these until its callback.
        c.input_loan = Some(input_loan);
        c.output_loan = Some(output_loan);
        c.credential = Some(step.credential.clone());
        // A client's first step without ALPN has no input at all.
        let input_desc: *mut SecBufferDesc = if step.first_client_call && !offer_alpn {
            core::ptr::null_mut()
        } else {
            &mut c.input_desc
        };
        let queued = if step.server {
            let mut requirements = (ASC_REQ_REPLAY_DETECT
                | ASC_REQ_SEQUENCE_DETECT
                | ASC_REQ_CONFIDENTIALITY
                | ASC_REQ_EXTENDED_ERROR
                | ASC_REQ_STREAM) as u32;
            if step.mutual_auth {
                requirements |= ASC_REQ_MUTUAL_AUTH as u32;
            }
            // SAFETY: every buffer (lent), descriptor and out-parameter (in the context's pool
            // block, unreachable while the step is in flight) stays put until the callback.
            unsafe {
                SspiAcceptSecurityContextAsync(
                    async_context,
                    step.credential.handle(),
                    existing,
                    input_desc,
                    requirements,
                    0,
                    &mut c.new_context,
                    &mut c.output_desc,
                    &mut c.attributes,
                    &mut c.expiry,
                )
            }
        } else {
            let mut requirements = (ISC_REQ_REPLAY_DETECT
                | ISC_REQ_SEQUENCE_DETECT
                | ISC_REQ_CONFIDENTIALITY
                | ISC_REQ_EXTENDED_ERROR
                | ISC_REQ_STREAM) as u32;
            if step.use_supplied_credentials {
                requirements |= ISC_REQ_USE_SUPPLIED_CREDS as u32;
            }
            // SAFETY: as above, the target name too (in the block); it is never NULL (an
            // empty name is an empty string).
            unsafe {
                SspiInitializeSecurityContextAsyncW(
                    async_context,
                    step.credential.handle(),
                    existing,
                    &c.target,
                    requirements,
                    0,
                    SECURITY_NATIVE_DREP,
                    input_desc,
                    0,
                    &mut c.new_context,
                    &mut c.output_desc,
                    &mut c.attributes,
                    &mut c.expiry,
                )
            }
        };
        match op.issued(queued) {
            Ok(()) => {
                self.in_flight = Some(async_context);
                Ok(())
            }
            Err(status) => {
                // No callback comes: the step's storage is ours again.
                if let Some(state) = self.state() {
                    state.call.release();
                }
                Err(StepFailure::Refused(status))
            }
        }
    }

    /// After a step's callback came on `op` (the operation it was issued on): adopts the context
    /// it created, gives back what the step had, and says what it wrote and left. None if no
    /// step is in flight on `op` or its call is still pending.
    pub fn finish_step(&mut self, op: &AsyncOp, input_len: usize) -> Option<StepResult> {
        if self.in_flight != Some(op.context()) || op.status() == SEC_I_ASYNC_CALL_PENDING {
            return None;
        }
        self.in_flight = None;
        let state = self.state()?;
        state.call.release();
        let c = &state.call;
        if c.new_context.is_valid() && !state.handle.is_valid() {
            state.handle = c.new_context;
        }
        let written = if c.output[0].kind() == SECBUFFER_TOKEN {
            c.output[0].cbBuffer as usize
        } else {
            0
        };
        let mut extra = None;
        for b in &c.input {
            if b.kind() == SECBUFFER_EXTRA {
                extra = Some((b.cbBuffer as usize).min(input_len));
            }
        }
        Some(StepResult { written, extra })
    }

    /// SECPKG_ATTR_STREAM_SIZES: header, trailer and largest message of a record.
    pub fn stream_sizes(&mut self) -> Result<SecPkgContext_StreamSizes, SECURITY_STATUS> {
        let mut sizes = SecPkgContext_StreamSizes::default();
        // SAFETY: the structure this attribute fills.
        unsafe { self.query(SECPKG_ATTR_STREAM_SIZES, &mut sizes) }.map(|()| sizes)
    }

    /// SECPKG_ATTR_CONNECTION_INFO's protocol (SP_PROT_*), 0 if Schannel does not say.
    pub fn protocol(&mut self) -> u32 {
        let mut info = SecPkgContext_ConnectionInfo::default();
        // SAFETY: the structure this attribute fills.
        match unsafe { self.query(SECPKG_ATTR_CONNECTION_INFO, &mut info) } {
            Ok(()) => info.dwProtocol,
            Err(_) => 0,
        }
    }

    /// Whether the handshake resumed a cached session (SECPKG_ATTR_SESSION_INFO's
    /// SSL_SESSION_RECONNECT); false if Schannel does not say.
    pub fn resumed(&mut self) -> bool {
        let mut info = ksys::schannel::SecPkgContext_SessionInfo::default();
        // SAFETY: the structure this attribute fills.
        match unsafe { self.query(SECPKG_ATTR_SESSION_INFO, &mut info) } {
            Ok(()) => info.dwFlags & ksys::schannel::SSL_SESSION_RECONNECT != 0,
            Err(_) => false,
        }
    }

    /// SECPKG_ATTR_CIPHER_INFO's IANA cipher suite, 0 if Schannel does not say.
    pub fn cipher_suite(&mut self) -> u32 {
        // SAFETY: plain data; all-zero is valid.
        let mut cipher: SecPkgContext_CipherInfo = unsafe { core::mem::zeroed() };
        cipher.dwVersion = 1;
        // SAFETY: the structure this attribute fills.
        match unsafe { self.query(SECPKG_ATTR_CIPHER_INFO, &mut cipher) } {
            Ok(()) => cipher.dwCipherSuite,
            Err(_) => 0,
        }
    }

    /// SECPKG_ATTR_APPLICATION_PROTOCOL: the negotiated ALPN id and its length, if one was.
    pub fn application_protocol(&mut self) -> Option<([u8; 255], u8)> {
        // SAFETY: plain data; all-zero is valid.
        let mut protocol: SecPkgContext_ApplicationProtocol = unsafe { core::mem::zeroed() };
        // SAFETY: the structure this attribute fills.
        unsafe { self.query(SECPKG_ATTR_APPLICATION_PROTOCOL, &mut protocol) }.ok()?;
        (protocol.ProtoNegoStatus == SEC_APPLICATION_PROTOCOL_NEGOTIATION_STATUS_SUCCESS)
            .then_some((protocol.ProtocolId, protocol.ProtocolIdSize))
    }

    /// SECPKG_ATTR_CERT_CHECK_RESULT_INPROC: the chain verdict's HRESULT (0: trusted).
    pub fn certificate_check_result(&mut self) -> Result<u32, SECURITY_STATUS> {
        let mut verdict = SecPkgContext_CertificateValidationResult::default();
        // SAFETY: the structure this attribute fills.
        unsafe { self.query(SECPKG_ATTR_CERT_CHECK_RESULT_INPROC, &mut verdict) }
            .map(|()| verdict.hrVerifyChainStatus as u32)
    }

    /// Lends SECPKG_ATTR_REMOTE_CERTIFICATES (`[u32 length][DER]` per certificate, leaf first)
    /// to `read`; None if the peer sent none or the query failed.
    pub fn with_remote_certificates<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let mut certs = SecPkgContext_Certificates {
            cCertificates: 0,
            cbCertificateChain: 0,
            pbCertificateChain: core::ptr::null_mut(),
        };
        // SAFETY: the structure this attribute fills.
        unsafe { self.query(SECPKG_ATTR_REMOTE_CERTIFICATES, &mut certs) }.ok()?;
        if certs.pbCertificateChain.is_null() {
            return None;
        }
        // SAFETY: SSPI allocated `cbCertificateChain` bytes at `pbCertificateChain`; they stay
        // valid until FreeContextBuffer below.
        let chain = unsafe {
            core::slice::from_raw_parts(certs.pbCertificateChain, certs.cbCertificateChain as usize)
        };
        let result = read(chain);
        // SAFETY: the buffer SSPI allocated for this query, freed once.
        unsafe { FreeContextBuffer(certs.pbCertificateChain as *mut c_void) };
        Some(result)
    }

    /// QueryContextAttributesW into `out`.
    ///
    /// # Safety
    /// `T` is the structure `attribute` fills.
    unsafe fn query<T>(&mut self, attribute: u32, out: &mut T) -> Result<(), SECURITY_STATUS> {
        let state = self.state().ok_or(SEC_E_INTERNAL_ERROR)?;
        // SAFETY: per the contract; the structure outlives the synchronous call.
        let status = unsafe {
            QueryContextAttributesW(&mut state.handle, attribute, out as *mut T as *mut c_void)
        };
        if status == SEC_E_OK {
            Ok(())
        } else {
            Err(status)
        }
    }

    /// DecryptMessage of the records at the front of `data`, in place.
    pub fn decrypt_in_place(&mut self, data: &mut [u8]) -> Decrypted {
        let Some(state) = self.state() else {
            return Decrypted {
                status: SEC_E_INTERNAL_ERROR,
                data: None,
                nonempty_data: None,
                extra: None,
            };
        };
        let base = data.as_mut_ptr();
        let mut buffers = [
            SecBuffer::new(SECBUFFER_DATA, base as *mut c_void, data.len() as u32),
            SecBuffer::EMPTY,
            SecBuffer::EMPTY,
            SecBuffer::EMPTY,
        ];
        let mut desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 4,
            pBuffers: buffers.as_mut_ptr(),
        };
        let status = {
            // SAFETY: the buffers describe `data`, which Schannel only rewrites in place; the
            // descriptor outlives the synchronous call.
            unsafe { DecryptMessage(&mut state.handle, &mut desc, 0, core::ptr::null_mut()) }
        };
        let region = |b: &SecBuffer| {
            (
                (b.pvBuffer as usize).wrapping_sub(base as usize),
                b.cbBuffer as usize,
            )
        };
        Decrypted {
            status,
            data: buffers
                .iter()
                .find(|b| b.kind() == SECBUFFER_DATA)
                .map(region),
            nonempty_data: buffers
                .iter()
                .find(|b| b.kind() == SECBUFFER_DATA && b.cbBuffer > 0)
                .map(region),
            extra: buffers
                .iter()
                .find(|b| b.kind() == SECBUFFER_EXTRA)
                .map(|b| (b.cbBuffer as usize).min(data.len())),
        }
    }

    /// EncryptMessage in place: `record` holds room for the header, then `n` bytes of
    /// plaintext, then room for the trailer (the sizes [`Self::stream_sizes`] gave). Returns
    /// the record's length on the wire.
    pub fn encrypt_in_place(
        &mut self,
        record: &mut [u8],
        header: usize,
        n: usize,
        trailer: usize,
        qop: u32,
    ) -> Result<usize, SECURITY_STATUS> {
        if header + n + trailer > record.len() {
            return Err(SEC_E_BUFFER_TOO_SMALL);
        }
        let state = self.state().ok_or(SEC_E_INTERNAL_ERROR)?;
        let (head, rest) = record.split_at_mut(header);
        let (data, tail) = rest.split_at_mut(n);
        let mut buffers = [
            SecBuffer::new(
                SECBUFFER_STREAM_HEADER,
                head.as_mut_ptr() as *mut c_void,
                header as u32,
            ),
            SecBuffer::new(SECBUFFER_DATA, data.as_mut_ptr() as *mut c_void, n as u32),
            SecBuffer::new(
                SECBUFFER_STREAM_TRAILER,
                tail.as_mut_ptr() as *mut c_void,
                trailer as u32,
            ),
            SecBuffer::EMPTY,
        ];
        let mut desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 4,
            pBuffers: buffers.as_mut_ptr(),
        };
        // SAFETY: the three regions lie inside `record`; the descriptor and buffers outlive the
        // synchronous call.
        let status = unsafe { EncryptMessage(&mut state.handle, qop, &mut desc, 0) };
        if status != SEC_E_OK {
            return Err(status);
        }
        let len = (buffers[0].cbBuffer + buffers[1].cbBuffer + buffers[2].cbBuffer) as usize;
        Ok(len.min(header + n + trailer))
    }

    /// SspiDeleteSecurityContextAsync on `op`: no thread waits on the LSA. The handle is gone
    /// once the call's callback came (whatever its status) — call [`Self::forget`] then. Err
    /// if it could not be queued (no callback comes; the context is intact).
    pub fn delete_async(&mut self, op: &mut AsyncOp) -> Result<(), SECURITY_STATUS> {
        let state = self.state().ok_or(SEC_E_INTERNAL_ERROR)?;
        let async_context = op.begin()?;
        // SAFETY: a context ready for a call; our valid handle, copied by the call.
        let queued = unsafe { SspiDeleteSecurityContextAsync(async_context, &mut state.handle) };
        op.issued(queued)
    }

    /// The context was deleted asynchronously (its callback came).
    pub fn forget(&mut self) {
        if let Some(state) = self.state() {
            state.handle = SecHandle::INVALID;
        }
    }

    /// DeleteSecurityContext, synchronously (PASSIVE_LEVEL; the LSA answers at once).
    pub fn delete(&mut self) {
        if let Some(state) = self.state().filter(|s| s.handle.is_valid()) {
            // SAFETY: our context, deleted once.
            unsafe { DeleteSecurityContext(&mut state.handle) };
            state.handle = SecHandle::INVALID;
        }
    }
}
