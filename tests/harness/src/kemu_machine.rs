//! The kemu backend: boots a user-mode Windows kernel in this process, loads the driver (linked
//! natively, or the shipped `.sys` with `--driver`), and opens the device as an administrator.

use std::path::Path;
use std::sync::Arc;

use kemu::{
    CallbackSchedule, Caller, Handle, Kernel, KernelConfig, KernelError, NativeDriver, TestCa,
    Validity,
};

use crate::device::{Device, DeviceError};
use crate::machine::{Machine, ServerCertificate};
use crate::{Callbacks, Globals, LogLevel};
use wsktls_client::kemu::KemuDevice;

/// A kernel with the driver loaded.
pub struct KemuMachine {
    kernel: Arc<Kernel>,
    handles: std::sync::Mutex<Vec<Handle>>,
    driver: String,
    log: LogLevel,
    callbacks: Callbacks,
}

fn err(e: impl std::fmt::Display) -> DeviceError {
    DeviceError(e.to_string())
}

impl KemuMachine {
    /// Boots a kernel and loads the driver: the shipped image at `image`, else the native one.
    pub fn boot(image: Option<&Path>, globals: &Globals) -> Result<KemuMachine, DeviceError> {
        let mut config = KernelConfig::try_from_env().map_err(DeviceError)?;
        if let Some(seed) = globals.seed {
            config.seed = seed;
        }
        config.faults.callbacks = match globals.callbacks {
            Callbacks::Random => CallbackSchedule::Random,
            Callbacks::Inline => CallbackSchedule::Inline,
            Callbacks::Deferred => CallbackSchedule::Deferred,
        };
        let kernel = Kernel::boot(config);
        for (name, value) in &globals.registry {
            kernel.set_service_parameter("wsktls", name, *value);
        }
        let driver = match image {
            Some(path) => {
                kernel.load_image("wsktls", path).map_err(err)?;
                format!("image {}", path.display())
            }
            None => {
                kernel
                    .load(NativeDriver {
                        service_name: "wsktls",
                        entry: wsktls::FxDriverEntry,
                        imports: ksys::imports::IMPORT_DIRECTORY,
                    })
                    .map_err(err)?;
                "natively linked driver".to_string()
            }
        };
        Ok(KemuMachine {
            kernel: Arc::new(kernel),
            handles: std::sync::Mutex::new(Vec::new()),
            driver,
            log: globals.log,
            callbacks: globals.callbacks,
        })
    }

    /// A throwaway CA the machine trusts and a server certificate for `names` in its store.
    pub fn make_server_certificate(
        &self,
        names: &[&str],
    ) -> Result<ServerCertificate, DeviceError> {
        let ca = TestCa::generate("wsktls selftest CA").map_err(err)?;
        let issued = ca.issue(names, Validity::Current).map_err(err)?;
        let mut made = ServerCertificate {
            thumbprint: [0; 20],
            ca_pem: ca.cert_pem(),
            chain_pem: issued.chain_pem,
            key_pem: issued.key_pem,
        };
        made.thumbprint = self.install(&made)?;
        Ok(made)
    }

    /// Puts a certificate made by another machine into this one's store (and trusts its CA):
    /// the thumbprint LISTEN names.
    pub fn install(&self, cert: &ServerCertificate) -> Result<[u8; 20], DeviceError> {
        let store = self.kernel.cert_store();
        let thumbprint = store
            .import_pem(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes())
            .map_err(err)?;
        store.add_root_pem(cert.ca_pem.as_bytes()).map_err(err)?;
        Ok(thumbprint.0)
    }

    /// Imports a PEM chain and key into the machine store: the thumbprint LISTEN names.
    pub fn import_certificate(&self, chain: &Path, key: &Path) -> Result<[u8; 20], DeviceError> {
        Ok(self
            .kernel
            .cert_store()
            .import_pem_files(chain, key)
            .map_err(err)?
            .0)
    }

    /// Trusts a CA (PEM file) for validating servers.
    pub fn trust(&self, ca: &Path) -> Result<(), DeviceError> {
        let pem = std::fs::read(ca).map_err(err)?;
        self.kernel.cert_store().add_root_pem(&pem).map_err(err)?;
        Ok(())
    }
}

impl KemuMachine {
    /// The driver's DbgPrint lines up to the chosen level, on stderr.
    fn print_log(&self) {
        // DPFLTR levels: 0 error, 1 warning, 2 trace, 3 info.
        let most = match self.log {
            LogLevel::Off => return,
            LogLevel::Error => 0,
            LogLevel::Warning => 1,
            LogLevel::Trace => 2,
            LogLevel::Info => 3,
        };
        for line in self.kernel.debug_log() {
            if line.level <= most {
                eprintln!("[driver] {}", line.text);
            }
        }
    }
}

impl Machine for KemuMachine {
    fn open(&self) -> Result<Box<dyn Device>, DeviceError> {
        let handle = self
            .kernel
            .open(r"\\.\WskTls", Caller::Administrator)
            .map_err(err)?;
        self.handles.lock().unwrap().push(handle);
        Ok(Box::new(KemuDevice::new(self.kernel.clone(), handle)))
    }

    fn describe(&self) -> String {
        let callbacks = match self.callbacks {
            Callbacks::Random => String::new(),
            other => format!(", callbacks {other:?}").to_lowercase(),
        };
        format!(
            "kemu (seed {:#x}{callbacks}), {}",
            self.kernel.seed(),
            self.driver
        )
    }

    fn finish(self: Box<Self>) -> Result<String, DeviceError> {
        for h in self.handles.lock().unwrap().drain(..) {
            self.kernel.close(h).map_err(err)?;
        }
        self.print_log();
        let kernel = Arc::try_unwrap(self.kernel)
            .map_err(|_| DeviceError("a device is still in use".into()))?;
        match kernel.shutdown() {
            Ok(()) => Ok("verifier clean: driver unloaded, no leaks, no violations".into()),
            Err(KernelError::Leaks(report)) => Err(DeviceError(format!(
                "verifier: {} leak(s) at unload: {report:?}",
                report.leaks.len()
            ))),
            Err(e) => Err(DeviceError(format!("verifier: {e}"))),
        }
    }
}
