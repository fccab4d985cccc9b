//! Device objects and symbolic links: created for the framework or a WDM driver, named,
//! referenced, deleted (the memory goes with the last reference and the last open file).

use super::*;

impl IoManager {
    /// IoCreateDevice(Secure) on behalf of the framework.
    pub fn create_device(
        &self,
        name: Option<String>,
        descriptor: SecurityDescriptor,
        exclusive: bool,
        wdf_device: usize,
        driver_object: usize,
    ) -> Result<usize, NTSTATUS> {
        let kernel = thread::kernel();
        let mut state = self.lock();
        if let Some(n) = &name {
            if state.names.contains_key(&key(n)) {
                return Err(STATUS_OBJECT_NAME_COLLISION);
            }
        }
        if kernel.faults.allocation_fails() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let object = crate::io::alloc_zeroed(DEVICE_OBJECT_SIZE) as usize;
        // DEVICE_OBJECT.DriverObject (offset 8), as IoCreateDevice sets it.
        // SAFETY: a fresh DEVICE_OBJECT_SIZE-byte allocation.
        unsafe { ((object + 8) as *mut usize).write(driver_object) };
        if let Some(n) = &name {
            state.names.insert(key(n), object);
        }
        state.devices.insert(
            object,
            DeviceEntry {
                name,
                descriptor,
                exclusive,
                initializing: true,
                deleted: false,
                references: 0,
                wdf_device,
                driver_object,
                extension: (0, 0),
                open_files: 0,
            },
        );
        Ok(object)
    }

    /// Gives a WDM device object its zeroed extension of `size` bytes → its address.
    pub fn attach_extension(&self, device: usize, size: usize) -> Option<usize> {
        let extension = crate::io::alloc_zeroed(size) as usize;
        match self.lock().devices.get_mut(&device) {
            Some(d) => {
                d.extension = (extension, size);
                Some(extension)
            }
            None => {
                crate::io::free(extension as *mut u8, size);
                None
            }
        }
    }

    /// The driver object of a live device object (None: not a live device).
    pub fn driver_of(&self, device: usize) -> Option<usize> {
        self.lock()
            .devices
            .get(&device)
            .filter(|d| !d.deleted)
            .map(|d| d.driver_object)
    }

    /// After DriverEntry: the WDM devices it created stop initializing (the I/O manager clears
    /// DO_DEVICE_INITIALIZING for them).
    pub fn driver_entry_returned(&self, driver_object: usize) {
        let mut state = self.lock();
        for (&object, d) in state.devices.iter_mut() {
            if d.driver_object == driver_object && d.wdf_device == 0 && !d.deleted {
                d.initializing = false;
                // SAFETY: a live DEVICE_OBJECT; Flags at offset 0x30.
                unsafe {
                    let flags = (object + 0x30) as *mut u32;
                    flags.write(flags.read() & !crate::io::device::DO_DEVICE_INITIALIZING);
                }
            }
        }
    }

    /// The framework device a device object belongs to (0: none, or unknown).
    pub fn framework_device(&self, device: usize) -> usize {
        self.lock().devices.get(&device).map_or(0, |d| d.wdf_device)
    }

    /// IoCreateSymbolicLink.
    pub fn create_link(&self, link: &str, target: &str) -> Result<(), NTSTATUS> {
        let mut state = self.lock();
        let k = dos_link(link);
        if state.links.contains_key(&k) {
            return Err(STATUS_OBJECT_NAME_COLLISION);
        }
        state.links.insert(k, target.to_owned());
        Ok(())
    }

    /// IoDeleteSymbolicLink.
    pub fn delete_link(&self, link: &str) -> bool {
        self.lock().links.remove(&dos_link(link)).is_some()
    }

    /// Clears DO_DEVICE_INITIALIZING.
    pub fn finish_initializing(&self, device: usize) {
        if let Some(d) = self.lock().devices.get_mut(&device) {
            d.initializing = false;
        }
    }

    /// IoDeleteDevice: the name goes now, the memory when the last reference goes.
    pub fn delete_device(&self, device: usize) {
        let mut state = self.lock();
        let Some(d) = state.devices.get_mut(&device) else {
            return;
        };
        d.deleted = true;
        let name = d.name.take();
        if let Some(n) = name {
            state.names.remove(&key(&n));
        }
        self.reap(&mut state, device);
    }

    pub(super) fn reap(&self, state: &mut IoState, device: usize) {
        let gone = state
            .devices
            .get(&device)
            .is_some_and(|d| d.deleted && d.references == 0 && d.open_files == 0);
        if gone {
            if let Some(d) = state.devices.remove(&device) {
                if d.extension.0 != 0 {
                    crate::io::free(d.extension.0 as *mut u8, d.extension.1);
                }
            }
            crate::io::free(device as *mut u8, DEVICE_OBJECT_SIZE);
        }
    }

    /// Takes a reference on a live device object; false if unknown or deleted.
    pub fn reference_device(&self, device: usize) -> bool {
        match self.lock().devices.get_mut(&device) {
            Some(d) if !d.deleted => {
                d.references += 1;
                true
            }
            _ => false,
        }
    }

    /// Drops a reference (the device object is freed with the last one after deletion).
    pub fn dereference_device(&self, device: usize) {
        let mut state = self.lock();
        if let Some(d) = state.devices.get_mut(&device) {
            d.references = d.references.saturating_sub(1);
        }
        self.reap(&mut state, device);
    }
}
