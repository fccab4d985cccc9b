//! The service's Parameters registry key, read-only: where an administrator tunes a driver.

use super::*;

/// The service's `Parameters` registry key
/// (`HKLM\SYSTEM\CurrentControlSet\Services\<service>\Parameters`), opened read-only: where an
/// administrator tunes a driver. Closed on drop. PASSIVE_LEVEL only.
#[derive(Debug)]
pub struct ParametersKey {
    key: WDFKEY,
}

impl ParametersKey {
    /// Opens the key. Err (typically STATUS_OBJECT_NAME_NOT_FOUND) when it does not exist —
    /// nothing was set — or cannot be read.
    pub fn open(driver: WDFDRIVER) -> Result<ParametersKey, NTSTATUS> {
        let mut key = WDFKEY::NULL;
        // SAFETY: a live driver handle; NULL attributes are allowed (the key's parent is the
        // driver); the out-param is a local.
        check(unsafe {
            WdfDriverOpenParametersRegistryKey(driver, KEY_READ, ptr::null_mut(), &mut key)
        })?;
        if key.is_null() {
            return Err(STATUS_UNSUCCESSFUL);
        }
        Ok(ParametersKey { key })
    }

    /// The REG_DWORD value `name` (UTF-16, no terminator needed). Err(STATUS_OBJECT_NAME_NOT_FOUND)
    /// when it is absent; another error when it is not a DWORD.
    pub fn dword(&self, name: &'static [u16]) -> Result<u32, NTSTATUS> {
        let name = UNICODE_STRING::from_static(name);
        let mut value = 0u32;
        // SAFETY: the key is open (ours until drop); the name and out-param are locals.
        check(unsafe { WdfRegistryQueryULong(self.key, &name, &mut value) })?;
        Ok(value)
    }

    /// Copies the REG_SZ value `name` into `buffer` as UTF-16 and returns how many code
    /// units it has (its NUL left out). Err: STATUS_OBJECT_NAME_NOT_FOUND when absent,
    /// STATUS_OBJECT_TYPE_MISMATCH when not a string, STATUS_BUFFER_OVERFLOW when it does not
    /// fit (with its NUL), STATUS_INVALID_PARAMETER for an empty buffer.
    pub fn string(&self, name: &'static [u16], buffer: &mut [u16]) -> Result<usize, NTSTATUS> {
        let name = UNICODE_STRING::from_static(name);
        let room = buffer.len().min(usize::from(u16::MAX) / 2);
        let mut value = UNICODE_STRING {
            Length: 0,
            MaximumLength: (room * 2) as u16,
            Buffer: buffer.as_mut_ptr(),
        };
        // SAFETY: the key is open; the buffer holds MaximumLength bytes and outlives the call.
        check(unsafe {
            WdfRegistryQueryUnicodeString(self.key, &name, ptr::null_mut(), &mut value)
        })?;
        Ok(usize::from(value.Length) / 2)
    }
}

impl Drop for ParametersKey {
    fn drop(&mut self) {
        // SAFETY: the key was opened by `open` and is closed exactly once, here.
        unsafe { WdfRegistryClose(self.key) }
    }
}
