//! The part of the registry drivers read: each service's `Parameters` key
//! (`HKLM\SYSTEM\CurrentControlSet\Services\<service>\Parameters`) and its REG_DWORD and
//! REG_SZ values.
//! Key and value names compare case-insensitively, as the registry's do.

use std::collections::HashMap;
use std::sync::Mutex;

/// One registry value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// REG_DWORD.
    Dword(u32),
    /// REG_SZ (without its terminating NUL).
    String(String),
}

/// Service parameters, set by the host before (or between) loads.
#[derive(Default)]
pub(crate) struct Registry {
    /// service (lower case) → value name (lower case) → value.
    services: Mutex<HashMap<String, HashMap<String, Value>>>,
}

impl Registry {
    /// Creates the service's Parameters key if needed and sets a REG_DWORD in it.
    pub fn set_dword(&self, service: &str, name: &str, value: u32) {
        self.set(service, name, Value::Dword(value));
    }

    /// Creates the service's Parameters key if needed and sets a REG_SZ in it.
    pub fn set_string(&self, service: &str, name: &str, value: &str) {
        self.set(service, name, Value::String(value.to_owned()));
    }

    fn set(&self, service: &str, name: &str, value: Value) {
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

    /// A value of the service's Parameters key.
    pub fn value(&self, service: &str, name: &str) -> Option<Value> {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&service.to_lowercase())?
            .get(&name.to_lowercase())
            .cloned()
    }
}
