//! The host's view of a kernel: boot, load a driver, open devices as a given caller, send
//! IOCTLs (waiting or pending, with cancellation), close, unload, shut down — and read the
//! debugger log, pool usage and any bugcheck.

mod config;
mod io;
mod loading;
mod usage;

pub use config::KernelConfig;
pub use io::PendingIo;
pub use usage::{ProcessUsage, process_usage};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ksys::DRIVER_OBJECT;
use ksys::import::ImportEntry;
use ksys::ntdef::{NTSTATUS, STATUS_INVALID_DEVICE_REQUEST, UNICODE_STRING, nt_success};

use crate::bugcheck::{self, Bugcheck};
use crate::faults::FaultPlan;
use crate::iomgr::{IoResult, IoSlot};
use crate::ke::pool::{Owner, TagUsage};
use crate::ke::timer::Timers;
use crate::kernel::Shared;
use crate::leaks::{Leak, LeakReport, tag_text};
use crate::rtl::LogLine;
use crate::sddl::Caller;
use crate::thread::{self, PASSIVE, Rank};

/// A natively linked driver has process-wide statics: one loaded copy per process.
static NATIVE_DRIVER_LOADED: AtomicBool = AtomicBool::new(false);

/// How long unload and shutdown wait for queued work to drain before reporting it.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a host call on a kernel failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// The kernel stopped.
    Bugcheck(Bugcheck),
    /// Objects outlived the driver.
    Leaks(LeakReport),
    /// The operation failed with this status (as the Windows API would report it).
    Status(NTSTATUS, String),
    /// A driver could not be loaded.
    Load(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Bugcheck(b) => write!(f, "{b}"),
            KernelError::Leaks(r) => write!(f, "{r}"),
            KernelError::Status(s, what) => write!(f, "{what}: NTSTATUS {:#010X}", s.0 as u32),
            KernelError::Load(why) => write!(f, "load failed: {why}"),
        }
    }
}

impl std::error::Error for KernelError {}

impl KernelError {
    /// The NTSTATUS of a [`KernelError::Status`].
    pub fn status(&self) -> Option<NTSTATUS> {
        match self {
            KernelError::Status(s, _) => Some(*s),
            _ => None,
        }
    }
}

/// Image entry point of a driver (FxDriverEntry).
pub type DriverEntry =
    unsafe extern "win64" fn(*mut DRIVER_OBJECT, *mut UNICODE_STRING) -> NTSTATUS;

/// A driver linked into the host process.
#[derive(Debug, Clone, Copy)]
pub struct NativeDriver {
    /// Service name (`sc create <name>`): names the driver object, registry key and pool tag.
    pub service_name: &'static str,
    /// The image entry point.
    pub entry: DriverEntry,
    /// ksys's import directory, whose slots kemu binds.
    pub imports: &'static [ImportEntry],
}

/// An open handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle(u64);

struct Loaded {
    driver_object: Box<DRIVER_OBJECT>,
    _registry: Box<[u16]>,
    registry_path: Box<UNICODE_STRING>,
    unbound_imports: Vec<String>,
    /// The mapped image (PE mode); unmapped after unload.
    image: Option<crate::pe::MappedImage>,
}

// SAFETY: the driver object and strings are only touched by kernel threads under the I/O
// manager's serialization (load, unload); the host only holds them.
unsafe impl Send for Loaded {}

/// One kemu kernel.
pub struct Kernel {
    shared: Arc<Shared>,
    loaded: Mutex<Option<Loaded>>,
    timer_thread: Mutex<Option<JoinHandle<()>>>,
    poller_thread: Mutex<Option<JoinHandle<()>>>,
    temporary_store: Option<std::path::PathBuf>,
    shut_down: AtomicBool,
    dispatch_on_caller: bool,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Kernel {{ id: {}, seed: {:#x} }}",
            self.shared.id,
            self.shared.faults.seed()
        )
    }
}

/// Runs `f` on a caller thread at PASSIVE_LEVEL and waits for it (or a bugcheck).
fn run_on<R: Send + 'static>(
    shared: &Arc<Shared>,
    activity: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, KernelError> {
    if let Some(b) = shared.bugcheck.get() {
        return Err(KernelError::Bugcheck(b.clone()));
    }
    let (tx, rx) = mpsc::channel();
    let label = activity.to_owned();
    shared.callers.submit(
        shared,
        Box::new(move || {
            // A panic is recorded as a bugcheck by the panic hook; the waiter sees that.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let result = thread::with_activity(&label, f);
                thread::check_balanced(&label, PASSIVE);
                result
            }));
            if let Ok(result) = result {
                let _ = tx.send(result);
            }
        }),
    );
    loop {
        match rx.recv_timeout(BUGCHECK_POLL) {
            Ok(result) => return Ok(result),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(b) = shared.bugcheck.get() {
            return Err(KernelError::Bugcheck(b.clone()));
        }
    }
}

/// The temporary certificate stores of this process's kernels (they hold private keys).
static TEMPORARY_STORES: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

/// Removes every temporary certificate store of this process's kernels now: for a host's
/// signal handler about to exit, so that no private key is left behind. (A kernel's own store
/// goes at its shutdown anyway.)
pub fn remove_temporary_stores() {
    let dirs = std::mem::take(&mut *TEMPORARY_STORES.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// How often a host thread blocked on the kernel looks for a bugcheck.
const BUGCHECK_POLL: Duration = Duration::from_millis(50);

fn utf16(s: &str) -> Box<[u16]> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

impl Kernel {
    /// Boots a kernel: worker threads, the DPC thread and the timer thread.
    pub fn boot(config: KernelConfig) -> Kernel {
        bugcheck::install_panic_hook();
        let shared = Shared::new(config.seed, config.faults, config.processors);
        shared
            .workers
            .start(&shared, "worker", Rank::Kernel, config.workers.max(1));
        shared.dpc.start(&shared);
        shared.lsa.collect_on_its_threads();
        shared.lsa.start(&shared, "lsa", Rank::Application, 2);
        let (store_dir, temporary_store) = match &config.cert_store {
            Some(dir) => (dir.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "kemu-store-{}-{}",
                    std::process::id(),
                    shared.id
                )),
                true,
            ),
        };
        let store = crate::ksecdd::store::CertStore::open(&store_dir)
            .expect("kemu: cannot create the certificate store");
        if temporary_store {
            TEMPORARY_STORES.lock().unwrap().push(store_dir.clone());
        }
        shared.ksecdd.set_store(store);
        let k = shared.clone();
        let timer = thread::spawn(&shared, "timer", Rank::Kernel, move || Timers::run(k));
        let poller = crate::netio::poller::PollerHandle::start(&shared)
            .expect("kemu: cannot create the WSK poller");
        Kernel {
            shared,
            loaded: Mutex::new(None),
            timer_thread: Mutex::new(Some(timer)),
            poller_thread: Mutex::new(Some(poller)),
            temporary_store: temporary_store.then_some(store_dir),
            shut_down: AtomicBool::new(false),
            dispatch_on_caller: config.dispatch_on_caller,
        }
    }

    /// Runs `f` as a system call of the calling host thread: on this very thread, which enters
    /// the kernel for the call (see [`KernelConfig::dispatch_on_caller`]); on a kemu caller
    /// thread if that is off or this thread is a kernel thread already.
    fn syscall<R: Send + 'static>(
        &self,
        activity: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, KernelError> {
        if let Some(b) = self.shared.bugcheck.get() {
            return Err(KernelError::Bugcheck(b.clone()));
        }
        if !self.dispatch_on_caller {
            return self.run(activity, f);
        }
        let Some(inside) = thread::borrow(self.shared.clone(), activity) else {
            return self.run(activity, f);
        };
        let result = thread::with_activity(activity, f);
        thread::check_balanced(activity, PASSIVE);
        drop(inside);
        Ok(result)
    }

    /// Runs `f` on a kernel thread at PASSIVE_LEVEL (how tests call kernel routines directly).
    pub fn run<R: Send + 'static>(
        &self,
        activity: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, KernelError> {
        run_on(&self.shared, activity, f)
    }

    /// The seed of this kernel's fault injection.
    pub fn seed(&self) -> u64 {
        self.shared.faults.seed()
    }

    /// Counted (fault-injectable) allocations so far.
    pub fn counted_allocations(&self) -> u64 {
        self.shared.faults.counted_allocations()
    }

    /// Allocations failed on purpose so far.
    pub fn injected_failures(&self) -> u64 {
        self.shared.faults.injected_failures()
    }

    /// The bugcheck, if the kernel stopped.
    pub fn bugcheck(&self) -> Option<Bugcheck> {
        self.shared.bugcheck.get().cloned()
    }

    /// Sets a REG_DWORD in a service's Parameters key (creating the key), as an administrator
    /// would with `reg add` before loading the driver.
    pub fn set_service_parameter(&self, service: &str, name: &str, value: u32) {
        self.shared.registry.set_dword(service, name, value);
    }

    /// Sets a REG_SZ under the service's Parameters key (see [`Self::set_service_parameter`]).
    pub fn set_service_string(&self, service: &str, name: &str, value: &str) {
        self.shared.registry.set_string(service, name, value);
    }

    /// The machine certificate store (import server certificates, trust roots).
    pub fn cert_store(&self) -> crate::ksecdd::store::CertStore {
        self.shared.ksecdd.store().clone()
    }

    /// One line per open WSK socket: its state and the operations queued on it (for reports
    /// about a request that stalled).
    pub fn describe_sockets(&self) -> Vec<String> {
        let state = self.shared.netio.lock();
        let mut lines: Vec<(u64, String)> = state
            .sockets
            .values()
            .map(|cell| {
                let s = crate::netio::socket::lock_socket(cell);
                (s.site.sequence, s.describe_open())
            })
            .collect();
        lines.sort();
        lines.into_iter().map(|(_, l)| l).collect()
    }

    /// WskAccept calls made so far (how often a listener re-posted its accept).
    pub fn accept_calls(&self) -> u64 {
        self.shared.faults.accepts()
    }

    /// Calls of an SSPI releasing routine so far (DeleteSecurityContext,
    /// SspiDeleteSecurityContextAsync, FreeCredentialsHandle, SspiFreeCredentialsHandleAsync):
    /// which ones a driver's teardown uses.
    pub fn sspi_release_calls(&self, routine: &str) -> u64 {
        self.shared.ksecdd.release_calls(routine)
    }

    /// Everything the driver printed.
    pub fn debug_log(&self) -> Vec<LogLine> {
        self.shared.log.lines()
    }

    /// Pool usage per tag (as text).
    pub fn pool_usage(&self) -> BTreeMap<String, TagUsage> {
        self.shared
            .pool
            .usage()
            .into_iter()
            .map(|(t, u)| (tag_text(t), u))
            .collect()
    }

    /// Imports of the loaded native driver that kemu does not provide.
    pub fn unbound_imports(&self) -> Vec<String> {
        self.loaded
            .lock()
            .unwrap()
            .as_ref()
            .map(|l| l.unbound_imports.clone())
            .unwrap_or_default()
    }

    /// Unloads the driver (if loaded), checks for leaks and stops the kernel's threads.
    pub fn shutdown(self) -> Result<(), KernelError> {
        let loaded = self.loaded.lock().unwrap().is_some();
        let unloaded = if loaded { self.unload() } else { Ok(()) };
        let result = unloaded.and_then(|()| {
            self.quiesce()?;
            let leaks = self.driver_leaks();
            if leaks.is_empty() {
                Ok(())
            } else {
                Err(KernelError::Leaks(leaks))
            }
        });
        self.stop_threads();
        if let Some(b) = self.bugcheck() {
            return Err(KernelError::Bugcheck(b));
        }
        result
    }

    fn stop_threads(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let join = self.shared.bugcheck.get().is_none();
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.workers.stop(join);
        self.shared.lsa.stop(join);
        self.shared.callers.stop();
        if let Some(dir) = &self.temporary_store {
            let _ = std::fs::remove_dir_all(dir);
            TEMPORARY_STORES.lock().unwrap().retain(|d| d != dir);
        }
        self.shared.dpc.stop(join);
        self.shared.timers.stop();
        crate::netio::socket::free_quarantine(&mut self.shared.netio.lock());
        self.shared.netio.poller.wake();
        if let Some(t) = self.poller_thread.lock().unwrap().take() {
            if join {
                let _ = t.join();
            }
        }
        if let Some(t) = self.timer_thread.lock().unwrap().take() {
            if join {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if self.loaded.lock().map(|l| l.is_some()).unwrap_or(false)
            && self.shared.bugcheck.get().is_none()
        {
            let _ = self.unload();
        }
        self.stop_threads();
        if self.loaded.lock().map(|l| l.is_some()).unwrap_or(false) {
            // The driver never unloaded (bugcheck): its statics stay claimed for this process.
            std::mem::forget(self.loaded.lock().unwrap().take());
        }
    }
}
