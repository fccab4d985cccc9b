//! Schannel credentials (SCH_CREDENTIALS version 5): a server's certificate named by its SHA-1
//! thumbprint in the machine store, or a client's validation policy, acquired asynchronously
//! (an [`Acquisition`] never blocks its caller) and shared by every session that uses them.

use core::cell::UnsafeCell;
use core::ffi::c_void;

use ksys::imports::*;
use ksys::io::{EXECUTIVE, KERNEL_MODE, KEVENT, SYNCHRONIZATION_EVENT};
use ksys::ntdef::UNICODE_STRING;
use ksys::schannel::*;
use ksys::sspi::*;

use ksys::io::DEVICE_OBJECT;

use crate::census::{Census, Entry};
use crate::pool::PoolArc;
use crate::session::Observer;
use crate::sspi::AsyncOp;
use crate::sync::SpinLock;
use crate::work::{Drain, Worker, signal_on_notify};

pub use crate::config::Versions;

/// What to acquire.
#[derive(Clone, Copy, Debug)]
pub struct CredentialSpec {
    /// Server (inbound) or client (outbound).
    pub inbound: bool,
    /// The server certificate's SHA-1 thumbprint in the machine store "MY" (servers), or a
    /// client certificate (clients, optional).
    pub thumbprint: Option<[u8; 20]>,
    /// SCH_CRED_* flags (e.g. SCH_CRED_MANUAL_CRED_VALIDATION for pinning or insecure mode).
    pub flags: u32,
    /// Which versions may be negotiated.
    pub versions: Versions,
    /// Servers: every client will be asked for a certificate (the sessions check the verdict);
    /// sets the client certificate policy on the credential, as Windows expects of such a
    /// server (SetCredentialsAttributesW, SECPKG_ATTR_CLIENT_CERT_POLICY).
    pub require_client_certificate: bool,
}

/// An acquired credential handle; freed when the last session lets go (at PASSIVE_LEVEL).
pub struct Credential {
    handle: UnsafeCell<SecHandle>,
    /// Set for a credential an [`Acquisition`] made: the handle is then freed with
    /// SspiFreeCredentialsHandleAsync and the census counts the free until its callback (a
    /// driver's unload must not overtake a callback into its image).
    census: Option<Census>,
}

// SAFETY: SSPI handles are usable from any thread; the handle value never changes after acquire.
unsafe impl Send for Credential {}
// SAFETY: as above.
unsafe impl Sync for Credential {}

struct Waiter {
    event: UnsafeCell<KEVENT>,
}

unsafe extern "win64" fn acquired(_context: *mut SspiAsyncContext, data: *mut c_void) {
    // SAFETY: `data` is the waiter of `acquire`, alive until the callback has run (it waits).
    unsafe { KeSetEvent((*(data as *const Waiter)).event.get(), 0, 0) };
}

/// What SspiAcquireCredentialsHandleAsyncW reads: kept in one place (pool, fixed address)
/// from the call until its callback, since the LSA may read them after the call returned.
struct Inputs {
    hash: SCHANNEL_CERT_HASH_STORE,
    tls: TLS_PARAMETERS,
    creds: SCH_CREDENTIALS,
    package: UNICODE_STRING,
    expiry: TimeStamp,
    inbound: bool,
}

impl Inputs {
    /// The SCH_CREDENTIALS for `spec` (pointers inside are set by [`Self::link`] once the
    /// inputs sit where they stay).
    fn new(spec: &CredentialSpec) -> Result<Inputs, SECURITY_STATUS> {
        let (p12, p13) = if spec.inbound {
            (SP_PROT_TLS1_2_SERVER, SP_PROT_TLS1_3_SERVER)
        } else {
            (SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT)
        };
        let mut wanted = 0u32;
        if spec.versions.tls12 {
            wanted |= p12;
        }
        if spec.versions.tls13 {
            wanted |= p13;
        }
        if wanted == 0 {
            return Err(SEC_E_ALGORITHM_MISMATCH);
        }
        // Every protocol not asked for is disabled: 0 would mean the system's defaults, which
        // include TLS 1.0/1.1 on many builds (MsQuic disables ~wanted the same way).
        let disabled = !wanted;
        // Clients never fall back to a default client certificate (SCH_CRED_NO_DEFAULT_CREDS,
        // as MsQuic and curl); servers insist on strong crypto and map no client certificate
        // to a Windows account.
        let flags = spec.flags
            | if spec.inbound {
                SCH_USE_STRONG_CRYPTO | SCH_CRED_NO_SYSTEM_MAPPER
            } else {
                SCH_CRED_NO_DEFAULT_CREDS
            };
        let mut hash = SCHANNEL_CERT_HASH_STORE {
            dwLength: SCHANNEL_CERT_HASH_STORE_SIZE,
            dwFlags: SCH_MACHINE_CERT_HASH,
            hProv: 0,
            ShaHash: [0; 20],
            pwszStoreName: [0; SCH_CRED_MAX_STORE_NAME_SIZE],
        };
        hash.pwszStoreName[0] = u16::from(b'M');
        hash.pwszStoreName[1] = u16::from(b'Y');
        let mut creds = SCH_CREDENTIALS {
            dwVersion: SCH_CREDENTIALS_VERSION,
            // A format only with a certificate to go with it.
            dwCredFormat: 0,
            cCreds: 0,
            paCred: core::ptr::null_mut(),
            hRootStore: core::ptr::null_mut(),
            cMappers: 0,
            aphMappers: core::ptr::null_mut(),
            dwSessionLifespan: 0,
            dwFlags: flags,
            cTlsParameters: 1,
            pTlsParameters: core::ptr::null_mut(),
        };
        if let Some(t) = spec.thumbprint {
            hash.ShaHash = t;
            creds.dwCredFormat = SCH_CRED_FORMAT_CERT_HASH_STORE;
            creds.cCreds = 1;
        }
        let package_units = &SCHANNEL_NAME_W[..SCHANNEL_NAME_W.len() - 1];
        Ok(Inputs {
            hash,
            tls: TLS_PARAMETERS {
                cAlpnIds: 0,
                rgstrAlpnIds: core::ptr::null_mut(),
                grbitDisabledProtocols: disabled,
                cDisabledCrypto: 0,
                pDisabledCrypto: core::ptr::null_mut(),
                dwFlags: 0,
            },
            creds,
            package: UNICODE_STRING {
                Length: (package_units.len() * 2) as u16,
                MaximumLength: (package_units.len() * 2) as u16,
                Buffer: package_units.as_ptr() as *mut u16,
            },
            expiry: 0,
            inbound: spec.inbound,
        })
    }

    /// Points the structures at one another where they now lie.
    fn link(&mut self) {
        self.creds.pTlsParameters = &mut self.tls;
        if self.creds.cCreds == 1 {
            self.creds.paCred = &mut self.hash as *mut _ as *mut c_void;
        }
    }

    /// Issues SspiAcquireCredentialsHandleAsyncW into `credential` on `context`.
    ///
    /// # Safety
    /// `self` (linked) and `credential` must stay where they are until the call's callback.
    unsafe fn issue(
        &mut self,
        context: *mut SspiAsyncContext,
        credential: &Credential,
    ) -> SECURITY_STATUS {
        let use_ = if self.inbound {
            SECPKG_CRED_INBOUND
        } else {
            SECPKG_CRED_OUTBOUND
        };
        // SAFETY: per the contract, everything the call reads or writes outlives it.
        unsafe {
            SspiAcquireCredentialsHandleAsyncW(
                context,
                core::ptr::null(),
                &self.package,
                use_,
                core::ptr::null_mut(),
                &mut self.creds as *mut _ as *mut c_void,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                credential.handle.get(),
                &mut self.expiry,
            )
        }
    }
}

impl Credential {
    fn unacquired(census: Option<&Census>) -> Result<PoolArc<Credential>, SECURITY_STATUS> {
        PoolArc::try_new(Credential {
            handle: UnsafeCell::new(SecHandle::INVALID),
            census: census.cloned(),
        })
        .map_err(|_| SEC_E_INSUFFICIENT_MEMORY)
    }

    /// SspiAcquireCredentialsHandleAsyncW, waiting for its callback: for a caller that may
    /// block (PASSIVE_LEVEL, e.g. DriverEntry or a test). A dispatch routine uses
    /// [`Acquisition`] instead, which never blocks.
    pub fn acquire(spec: &CredentialSpec) -> Result<PoolArc<Credential>, SECURITY_STATUS> {
        Credential::acquire_counted(spec, None)
    }

    /// [`Credential::acquire`]; with a census, the credential is later freed asynchronously
    /// and the census counts the free until its callback.
    pub(crate) fn acquire_counted(
        spec: &CredentialSpec,
        census: Option<&Census>,
    ) -> Result<PoolArc<Credential>, SECURITY_STATUS> {
        let inputs = PoolArc::try_new(UnsafeCell::new(Inputs::new(spec)?))
            .map_err(|_| SEC_E_INSUFFICIENT_MEMORY)?;
        let waiter = PoolArc::try_new(Waiter {
            // SAFETY: KEVENT is plain data, initialized below before use.
            event: UnsafeCell::new(unsafe { core::mem::zeroed() }),
        })
        .map_err(|_| SEC_E_INSUFFICIENT_MEMORY)?;
        // SAFETY: the pool-resident event, initialized once.
        unsafe { KeInitializeEvent(waiter.event.get(), SYNCHRONIZATION_EVENT, 0) };
        let mut op = AsyncOp::try_new(acquired, &*waiter as *const Waiter as *mut c_void)
            .map_err(|_| SEC_E_INSUFFICIENT_MEMORY)?;
        let credential = Credential::unacquired(census)?;
        let context = op.begin().map_err(|_| SEC_E_INSUFFICIENT_MEMORY)?;
        // SAFETY: only this thread touches the inputs; they and the credential stay in pool
        // until the callback, which we wait for below.
        let queued = unsafe {
            let inputs = &mut *inputs.get();
            inputs.link();
            inputs.issue(context, &credential)
        };
        op.issued(queued)?;
        // SAFETY: our event; the callback sets it exactly once for this call.
        unsafe {
            KeWaitForSingleObject(
                waiter.event.get() as *mut c_void,
                EXECUTIVE,
                KERNEL_MODE,
                0,
                core::ptr::null(),
            )
        };
        let status = op.status();
        if status != SEC_E_OK {
            return Err(status);
        }
        if spec.inbound && spec.require_client_certificate {
            credential.set_client_certificate_policy()?;
        }
        Ok(credential)
    }

    /// SECPKG_ATTR_CLIENT_CERT_POLICY with the default chain policy (no revocation flags): what
    /// MsQuic sets on a server credential that requires client certificates.
    fn set_client_certificate_policy(&self) -> Result<(), SECURITY_STATUS> {
        let mut policy = SecPkgCred_ClientCertPolicy {
            dwFlags: 0,
            guidPolicyId: [0; 16],
            dwCertFlags: 0,
            dwUrlRetrievalTimeout: 0,
            fCheckRevocationFreshnessTime: 0,
            dwRevocationFreshnessTime: 0,
            fOmitUsageCheck: 0,
            pwszSslCtlStoreName: core::ptr::null_mut(),
            pwszSslCtlIdentifier: core::ptr::null_mut(),
        };
        // SAFETY: our acquired handle and a structure that outlives the synchronous call.
        let status = unsafe {
            SetCredentialsAttributesW(
                self.handle(),
                SECPKG_ATTR_CLIENT_CERT_POLICY,
                &mut policy as *mut _ as *mut c_void,
                core::mem::size_of::<SecPkgCred_ClientCertPolicy>() as u32,
            )
        };
        if status == SEC_E_OK {
            Ok(())
        } else {
            Err(status)
        }
    }

    /// The handle SSPI calls take.
    pub fn handle(&self) -> *mut SecHandle {
        self.handle.get()
    }
}

impl Drop for Credential {
    fn drop(&mut self) {
        let handle = *self.handle.get_mut();
        if !handle.is_valid() {
            return;
        }
        if let Some(census) = &self.census {
            if free_async(handle, census) {
                return;
            }
        }
        let mut handle = handle;
        // SAFETY: acquired, freed once (the last reference is going away; the asynchronous free
        // was not queued).
        unsafe { FreeCredentialsHandle(&mut handle) };
    }
}

/// What an asynchronous free keeps until its callback.
struct Freeing {
    _census: Entry,
}

unsafe extern "win64" fn credential_freed(context: *mut SspiAsyncContext, data: *mut c_void) {
    // SAFETY: the context is this call's alone and done (freeing it in its own callback is
    // allowed); `data` is the reference `free_async` gave up. The census entry goes last.
    unsafe {
        SspiFreeAsyncContext(context);
        drop(PoolArc::from_raw(data as *const Freeing));
    }
}

/// SspiFreeCredentialsHandleAsync on a context of its own, freed by its callback. False if it
/// could not be queued (the handle is then still valid).
fn free_async(mut handle: SecHandle, census: &Census) -> bool {
    let Ok(freeing) = PoolArc::try_new(Freeing {
        _census: census.enter(),
    }) else {
        return false;
    };
    // SAFETY: plain SSPI calls at PASSIVE_LEVEL; the context is ours until its callback, which
    // takes back the reference given up here.
    unsafe {
        let context = SspiCreateAsyncContext();
        if context.is_null() {
            return false;
        }
        let data = PoolArc::into_raw(freeing) as *mut c_void;
        if SspiSetAsyncNotifyCallback(context, Some(credential_freed), data) != SEC_E_OK {
            SspiFreeAsyncContext(context);
            drop(PoolArc::from_raw(data as *const Freeing));
            return false;
        }
        if SspiFreeCredentialsHandleAsync(context, &mut handle) != SEC_E_OK {
            // No callback comes (a context left pending is freed all the same: the way out).
            SspiFreeAsyncContext(context);
            drop(PoolArc::from_raw(data as *const Freeing));
            return false;
        }
    }
    true
}

const EV_START: u32 = 1;
const EV_SSPI: u32 = 2;

/// Where an acquisition is.
enum Step {
    /// Not issued yet (the first drain issues it).
    Start,
    /// Issued; the callback will come.
    Waiting,
    /// Finished; the outcome is in the mailbox.
    Done,
}

/// The drain's side of an acquisition: only the drain touches it (see
/// [`crate::work::Drain::Exclusive`]).
pub struct AcquireEngine {
    inputs: Inputs,
    op: Option<AsyncOp>,
    step: Step,
    /// Held until the call has finished: unload waits for it.
    census: Option<Entry>,
}

// SAFETY: the SCH_CREDENTIALS inputs point into their own pool-resident block and the async
// context is a kernel object; the engine is touched only by the drain, one thread at a time.
unsafe impl Send for AcquireEngine {}

/// An acquisition's shared state.
pub struct Acquiring<O: Observer> {
    credential: PoolArc<Credential>,
    require_client_certificate: bool,
    outcome: SpinLock<Option<Result<PoolArc<Credential>, SECURITY_STATUS>>>,
    observer: O,
}

// SAFETY: the engine is only touched by the drain (never concurrently); the outcome is behind a
// spin lock; the credential's handle is written only by the LSA before the callback.
unsafe impl<O: Observer> Send for Acquiring<O> {}
// SAFETY: as above.
unsafe impl<O: Observer> Sync for Acquiring<O> {}

/// A credential being acquired without blocking anyone: SspiAcquireCredentialsHandleAsyncW is
/// issued from a work item, its callback signals that work item, which records the outcome and
/// tells the observer. Dropping the acquisition abandons it: the call still finishes (the census
/// counts it) and the credential is freed then.
pub struct Acquisition<O: Observer> {
    worker: Worker<Acquiring<O>>,
}


impl<O: Observer> Acquisition<O> {
    /// Starts acquiring what `spec` describes; `observer` hears when it has finished.
    ///
    /// # Safety
    /// `device` must be a live device object of the calling driver, kept until the acquisition
    /// has finished (its work item references it); `census`, if given, is what unload waits on.
    pub unsafe fn start(
        device: *mut DEVICE_OBJECT,
        spec: &CredentialSpec,
        census: Option<&Census>,
        observer: O,
    ) -> Result<Acquisition<O>, SECURITY_STATUS> {
        let engine = AcquireEngine {
            inputs: Inputs::new(spec)?,
            op: None,
            step: Step::Start,
            census: census.map(Census::enter),
        };
        let target = Acquiring {
            credential: Credential::unacquired(census)?,
            require_client_certificate: spec.inbound && spec.require_client_certificate,
            outcome: SpinLock::new(None),
            observer,
        };
        // SAFETY: per the contract.
        let worker =
            unsafe { Worker::try_new(device, target, engine) }.map_err(|_| SEC_E_INSUFFICIENT_MEMORY)?;
        worker.signal(EV_START);
        Ok(Acquisition { worker })
    }

    /// The outcome once the acquisition has finished (taken: later calls give None).
    pub fn take(&self) -> Option<Result<PoolArc<Credential>, SECURITY_STATUS>> {
        self.worker.target().outcome.lock().take()
    }

    /// The observer given to [`Self::start`].
    pub fn observer(&self) -> &O {
        &self.worker.target().observer
    }
}

impl<O: Observer> Drain for Acquiring<O> {
    type Exclusive = AcquireEngine;

    fn drain(worker: &Worker<Self>, e: &mut AcquireEngine, events: u32) {
        let a = worker.target();
        let finished = match e.step {
            Step::Start if events & EV_START != 0 => e.issue(a, worker),
            Step::Waiting if events & EV_SSPI != 0 => e.finished(a),
            _ => None,
        };
        if let Some(outcome) = finished {
            e.step = Step::Done;
            *a.outcome.lock() = Some(outcome);
            a.observer.changed();
            // The call is over and the observer told: unload need not wait for this acquisition
            // any more. Not before: the observer reaches into the driver's device context, which
            // unload frees once the census is empty.
            e.census = None;
        }
    }
}

impl AcquireEngine {
    /// Issues the call; Some(error) if it could not be queued (no callback will come).
    fn issue<O: Observer>(
        &mut self,
        a: &Acquiring<O>,
        worker: &Worker<Acquiring<O>>,
    ) -> Option<Result<PoolArc<Credential>, SECURITY_STATUS>> {
        if self.op.is_none() {
            let notify = signal_on_notify::<Acquiring<O>, EV_SSPI>;
            match AsyncOp::try_new(notify, worker.as_raw() as *mut c_void) {
                Ok(op) => self.op = Some(op),
                Err(status) => return Some(Err(status)),
            }
        }
        let op = self.op.as_mut()?;
        let context = match op.begin() {
            Ok(context) => context,
            Err(status) => return Some(Err(status)),
        };
        self.inputs.link();
        // The callback's reference keeps this worker (and so the inputs) until it has run.
        let inputs = &mut self.inputs;
        let issued = worker.lend(|| {
            // SAFETY: the inputs and the credential live in this worker's pool block, which the
            // lent reference keeps until the callback has run.
            let queued = unsafe { inputs.issue(context, &a.credential) };
            op.issued(queued)
        });
        match issued {
            Ok(()) => {
                self.step = Step::Waiting;
                None
            }
            Err(status) => Some(Err(status)),
        }
    }

    /// The call's outcome, once its callback came.
    fn finished<O: Observer>(
        &mut self,
        a: &Acquiring<O>,
    ) -> Option<Result<PoolArc<Credential>, SECURITY_STATUS>> {
        let status = self.op.as_ref()?.status();
        if status == SEC_I_ASYNC_CALL_PENDING {
            return None;
        }
        if status != SEC_E_OK {
            return Some(Err(status));
        }
        if a.require_client_certificate {
            if let Err(status) = a.credential.set_client_certificate_policy() {
                return Some(Err(status));
            }
        }
        Some(Ok(a.credential.clone()))
    }
}
