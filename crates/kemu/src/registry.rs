//! The part of the registry drivers read: each service's `Parameters` key
//! (`HKLM\SYSTEM\CurrentControlSet\Services\<service>\Parameters`) and its REG_DWORD values.
//! Key and value names compare case-insensitively, as the registry's do.

use std::collections::HashMap;
use std::sync::Mutex;

/// Service parameters, set by the host before (or between) loads.
#[derive(Default)]
pub(crate) struct Registry {
    /// service (lower case) → value name (lower case) → value.
    services: Mutex<HashMap<String, HashMap<String, u32>>>,
}

impl Registry {
    /// Creates the service's Parameters key if needed and sets a REG_DWORD in it.
    pub fn set_dword(&self, service: &str, name: &str, value: u32) {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_lowercase())
            .or_default()
            .insert(name.to_lowercase(), value);
    }

    /// Whether the service has a Parameters key.
    pub fn has_parameters(&self, service: &str) -> bool {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&service.to_lowercase())
    }

    /// A REG_DWORD of the service's Parameters key.
    pub fn dword(&self, service: &str, name: &str) -> Option<u32> {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&service.to_lowercase())?
            .get(&name.to_lowercase())
            .copied()
    }
}
