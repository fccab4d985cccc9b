//! Loading and unloading a driver: a natively linked one or a PE image, its DriverEntry on a
//! system thread, and the leak check when it goes.

use super::*;

impl Kernel {
    /// Loads a natively linked driver: binds its imports, then runs its entry point on a
    /// system thread at PASSIVE_LEVEL. A failing DriverEntry must leave nothing behind.
    pub fn load(&self, driver: NativeDriver) -> Result<(), KernelError> {
        if self.loaded.lock().unwrap().is_some() {
            return Err(KernelError::Load(
                "this kernel already has a driver loaded".into(),
            ));
        }
        if NATIVE_DRIVER_LOADED.swap(true, Ordering::AcqRel) {
            return Err(KernelError::Load(
                "a native driver is already loaded in this process (one kernel per process)".into(),
            ));
        }
        let unbound_imports = crate::exports::bind_native(driver.imports);
        let result = self.start(driver.service_name, driver.entry, unbound_imports, None);
        if result.is_err() {
            NATIVE_DRIVER_LOADED.store(false, Ordering::Release);
        }
        result
    }

    /// Loads a driver image (`wsktls.sys` as shipped): maps it, binds its imports through the
    /// export registry (an import kemu lacks fails the load, listing every missing one) and runs
    /// its entry point. Each kernel can load its own copy: images carry their own statics.
    pub fn load_image(
        &self,
        service_name: &str,
        path: &std::path::Path,
    ) -> Result<(), KernelError> {
        if self.loaded.lock().unwrap().is_some() {
            return Err(KernelError::Load(
                "this kernel already has a driver loaded".into(),
            ));
        }
        let image =
            crate::pe::MappedImage::map_file(path).map_err(|e| KernelError::Load(e.to_string()))?;
        let entry = image.entry();
        self.start(service_name, entry, Vec::new(), Some(image))
    }

    fn start(
        &self,
        name: &str,
        entry: DriverEntry,
        unbound_imports: Vec<String>,
        image: Option<crate::pe::MappedImage>,
    ) -> Result<(), KernelError> {
        let mut tag_bytes = [b' '; 4];
        for (i, b) in name.bytes().take(4).enumerate() {
            tag_bytes[i] = b;
        }
        let registry = utf16(&format!(
            "\\Registry\\Machine\\System\\CurrentControlSet\\Services\\{name}"
        ));
        let driver_name = utf16(&format!("\\Driver\\{name}"));
        // SAFETY: DRIVER_OBJECT is plain old data; all-zero is its pre-initialization state.
        let mut driver_object: Box<DRIVER_OBJECT> = Box::new(unsafe { std::mem::zeroed() });
        driver_object.Type = 4;
        driver_object.Size = std::mem::size_of::<DRIVER_OBJECT>() as i16;
        crate::wdf::dispatch::initialize_major_functions(&mut driver_object);
        driver_object.DriverName = UNICODE_STRING {
            Length: ((driver_name.len() - 1) * 2) as u16,
            MaximumLength: (driver_name.len() * 2) as u16,
            Buffer: Box::leak(driver_name).as_mut_ptr(),
        };
        if let Some(image) = &image {
            driver_object.DriverStart = image.range().start as *mut std::ffi::c_void;
            driver_object.DriverSize = image.range().len() as u32;
        }
        let mut registry_path = Box::new(UNICODE_STRING {
            Length: ((registry.len() - 1) * 2) as u16,
            MaximumLength: (registry.len() * 2) as u16,
            Buffer: registry.as_ptr() as *mut u16,
        });
        {
            let mut wdf = self.shared.wdf.lock();
            wdf.service_name = name.to_owned();
            wdf.pool_tag = u32::from_le_bytes(tag_bytes);
            wdf.driver_object = &*driver_object as *const DRIVER_OBJECT as usize;
        }
        let object_address = &mut *driver_object as *mut DRIVER_OBJECT as usize;
        let path_address = &mut *registry_path as *mut UNICODE_STRING as usize;
        let status = self.run("DriverEntry", move || {
            // SAFETY: the driver object and registry path outlive the call (owned by `Loaded`).
            unsafe {
                entry(
                    object_address as *mut DRIVER_OBJECT,
                    path_address as *mut UNICODE_STRING,
                )
            }
        });
        let status = status?;
        if nt_success(status) {
            self.shared.io.driver_entry_returned(object_address);
        }
        let loaded = Loaded {
            driver_object,
            _registry: registry,
            registry_path,
            unbound_imports,
            image,
        };
        if !nt_success(status) {
            let leaks = self.driver_leaks();
            drop(loaded);
            self.shared.wdf.lock().driver_object = 0;
            if !leaks.is_empty() {
                return Err(KernelError::Leaks(leaks));
            }
            return Err(KernelError::Status(status, "DriverEntry".into()));
        }
        if let Some(image) = &loaded.image {
            image.discard_init();
        }
        let _ = &loaded.registry_path;
        *self.loaded.lock().unwrap() = Some(loaded);
        Ok(())
    }

    /// Waits until no work item, DPC or worker job is queued or running.
    pub(super) fn quiesce(&self) -> Result<(), KernelError> {
        let s = &self.shared;
        s.wait_for(Some(QUIESCE_TIMEOUT), || {
            (s.workers.is_idle()
                && s.dpc.is_idle()
                && s.lsa.is_idle()
                && s.work_items.busy() == 0
                && s.timers.no_dpc_queued()
                && s.irps.no_completion_running())
            .then_some(())
        })
        .map_err(KernelError::Bugcheck)?;
        Ok(())
    }

    /// Everything the driver still owns.
    pub(super) fn driver_leaks(&self) -> LeakReport {
        let s = &self.shared;
        let wdf_leaks;
        let wdf_blocks: Vec<usize>;
        {
            let state = s.wdf.lock();
            wdf_leaks = crate::wdf::object::leaks(&state);
            wdf_blocks = state
                .objects
                .values()
                .flat_map(|o| o.blocks.iter().copied())
                .chain(state.inits.keys().copied())
                .collect();
        }
        let mut leaks: Vec<Leak> = s
            .pool
            .leaks(Owner::Driver)
            .into_iter()
            .filter(|l| !wdf_blocks.contains(&l.address))
            .collect();
        leaks.extend(wdf_leaks);
        leaks.extend(s.irps.leaks(Owner::Driver));
        leaks.extend(s.mdls.leaks());
        leaks.extend(s.work_items.leaks());
        leaks.extend(s.timers.leaks());
        leaks.extend(s.io.leaks());
        leaks.extend(s.netio.leaks());
        leaks.extend(s.ksecdd.leaks());
        leaks.sort_by_key(|l| l.site.sequence);
        LeakReport { leaks }
    }

    /// `sc stop`: runs the driver's unload routine, then checks that nothing outlived it.
    pub fn unload(&self) -> Result<(), KernelError> {
        let mut guard = self.loaded.lock().unwrap();
        let Some(loaded) = guard.as_mut() else {
            return Err(KernelError::Load("no driver is loaded".into()));
        };
        let Some(unload) = loaded.driver_object.DriverUnload else {
            return Err(KernelError::Status(
                STATUS_INVALID_DEVICE_REQUEST,
                "the driver has no unload routine".into(),
            ));
        };
        let object = &mut *loaded.driver_object as *mut DRIVER_OBJECT as usize;
        self.run("DriverUnload", move || {
            // SAFETY: the routine the driver (stub) installed, called with its own driver object.
            unsafe { unload(object as *mut DRIVER_OBJECT) }
        })?;
        self.quiesce()?;
        let leaks = self.driver_leaks();
        let native = guard.as_ref().is_some_and(|l| l.image.is_none());
        *guard = None;
        self.shared.wdf.lock().driver_object = 0;
        if native {
            NATIVE_DRIVER_LOADED.store(false, Ordering::Release);
        }
        if leaks.is_empty() {
            Ok(())
        } else {
            Err(KernelError::Leaks(leaks))
        }
    }
}
