//! Framework registry keys: WdfDriverOpenParametersRegistryKey, WdfRegistryQueryULong,
//! WdfRegistryQueryUnicodeString, WdfRegistryClose — over kemu's registry of service parameters (all PASSIVE_LEVEL).

use ksys::ntdef::{
    NTSTATUS, STATUS_ACCESS_DENIED, STATUS_BUFFER_OVERFLOW, STATUS_INVALID_PARAMETER,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_TYPE_MISMATCH, STATUS_SUCCESS, UNICODE_STRING,
};
use ksys::wdf::types::*;

use super::{Data, Kind, object, violation, with_object};
use crate::bugcheck::wdf_violation;
use crate::registry::Value;
use crate::thread::{self, PASSIVE};

/// Access a read-only open may ask for: KEY_READ and its parts.
const READ_ACCESS: u32 = KEY_READ | 0x0001 | 0x0008 | 0x0010;

/// WdfDriverOpenParametersRegistryKey. A key that was never created (no parameter set for the
/// service) fails with STATUS_OBJECT_NAME_NOT_FOUND: kemu does not create it for a read-only
/// open (strictest reading; docs/windows-validation.md).
pub(crate) unsafe extern "win64" fn wdf_driver_open_parameters_registry_key(
    _g: *mut WDF_DRIVER_GLOBALS,
    driver: WDFDRIVER,
    desired_access: u32,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
    key_out: *mut WDFKEY,
) -> NTSTATUS {
    const ROUTINE: &str = "WdfDriverOpenParametersRegistryKey";
    thread::require_at_most(ROUTINE, PASSIVE);
    if key_out.is_null() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            0,
            format!("{ROUTINE}: NULL key out-pointer"),
        );
    }
    // SAFETY: the driver's out-pointer; cleared first as the framework does.
    unsafe { *key_out = WDFKEY::NULL };
    let attrs = object::attributes(attrs, ROUTINE);
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    let raw = driver.as_raw() as usize;
    if let Err(m) = state.get(raw, &[Kind::Driver], ROUTINE) {
        drop(state);
        violation(wdf_violation::INVALID_HANDLE, raw, m);
    }
    if desired_access & !READ_ACCESS != 0 {
        // kemu's registry is read-only to drivers.
        return STATUS_ACCESS_DENIED;
    }
    let service = state.service_name.clone();
    if !kernel.registry.has_parameters(&service) {
        return STATUS_OBJECT_NAME_NOT_FOUND;
    }
    let parent = attrs
        .filter(|a| !a.ParentObject.is_null())
        .map_or(raw, |a| a.ParentObject.as_raw() as usize);
    match object::create(
        &mut state,
        Kind::Key,
        parent,
        attrs,
        true,
        Data::Key { service },
    ) {
        Ok(handle) => {
            // SAFETY: checked non-NULL above.
            unsafe { *key_out = super::handle(handle, WDFKEY::from_raw) };
            STATUS_SUCCESS
        }
        Err(status) => status,
    }
}

/// A query's checks: PASSIVE_LEVEL, a live key object → the service whose Parameters key it
/// is, and the value name (None for a NULL name).
///
/// # Safety
/// `name` is NULL or a valid UNICODE_STRING.
unsafe fn key_and_name(
    key: WDFKEY,
    name: *const UNICODE_STRING,
    routine: &str,
) -> Option<(String, String)> {
    thread::require_at_most(routine, PASSIVE);
    let service = with_object(key.as_raw() as usize, &[Kind::Key], routine, |o| {
        match &o.data {
            Data::Key { service } => service.clone(),
            _ => unreachable!("key data"),
        }
    });
    // SAFETY: per the contract.
    let name = unsafe { crate::rtl::unicode_text(name) }?;
    Some((service, name))
}

/// WdfRegistryQueryULong: a REG_DWORD of the key.
pub(crate) unsafe extern "win64" fn wdf_registry_query_ulong(
    _g: *mut WDF_DRIVER_GLOBALS,
    key: WDFKEY,
    name: *const UNICODE_STRING,
    value: *mut u32,
) -> NTSTATUS {
    // SAFETY: per this routine's contract with the driver.
    let Some((service, name)) = (unsafe { key_and_name(key, name, "WdfRegistryQueryULong") })
    else {
        return STATUS_INVALID_PARAMETER;
    };
    if value.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    match thread::kernel().registry.value(&service, &name) {
        Some(Value::Dword(v)) => {
            // SAFETY: the driver's non-NULL out-pointer.
            unsafe { *value = v };
            STATUS_SUCCESS
        }
        // The framework checks the value's type (FxRegKey::QueryULong: REG_DWORD only).
        Some(Value::String(_)) => STATUS_OBJECT_TYPE_MISMATCH,
        None => STATUS_OBJECT_NAME_NOT_FOUND,
    }
}

/// WdfRegistryQueryUnicodeString, as the framework's fxregistryapi.cpp does it: the value's
/// bytes with their NUL go into `value`'s buffer (Length then leaves the NUL out);
/// `byte_length`, if given, receives the bytes the value takes (NUL included), also when the
/// buffer is too small (STATUS_BUFFER_OVERFLOW, nothing copied). A NULL `value` only asks for
/// the length; a `value` with MaximumLength 0 is STATUS_INVALID_PARAMETER; a value that is not
/// a string is STATUS_OBJECT_TYPE_MISMATCH.
pub(crate) unsafe extern "win64" fn wdf_registry_query_unicode_string(
    _g: *mut WDF_DRIVER_GLOBALS,
    key: WDFKEY,
    name: *const UNICODE_STRING,
    byte_length: *mut u16,
    value: *mut UNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: per this routine's contract with the driver.
    let Some((service, name)) =
        (unsafe { key_and_name(key, name, "WdfRegistryQueryUnicodeString") })
    else {
        return STATUS_INVALID_PARAMETER;
    };
    // SAFETY: NULL or the driver's UNICODE_STRING.
    let target = unsafe { value.as_mut() };
    if target
        .as_ref()
        .is_some_and(|v| v.MaximumLength == 0 || v.Buffer.is_null())
    {
        return STATUS_INVALID_PARAMETER;
    }
    let text = match thread::kernel().registry.value(&service, &name) {
        Some(Value::String(text)) => text,
        Some(Value::Dword(_)) => return STATUS_OBJECT_TYPE_MISMATCH,
        None => return STATUS_OBJECT_NAME_NOT_FOUND,
    };
    let mut wide: Vec<u16> = text.encode_utf16().collect();
    wide.push(0);
    let bytes = wide.len() * 2;
    let Ok(bytes16) = u16::try_from(bytes) else {
        // A UNICODE_STRING cannot hold it.
        return STATUS_BUFFER_OVERFLOW;
    };
    if !byte_length.is_null() {
        // SAFETY: the driver's non-NULL out-pointer.
        unsafe { *byte_length = bytes16 };
    }
    let Some(target) = target else {
        return STATUS_BUFFER_OVERFLOW;
    };
    if usize::from(target.MaximumLength) < bytes {
        return STATUS_BUFFER_OVERFLOW;
    }
    // SAFETY: the driver's buffer holds MaximumLength bytes, at least `bytes`.
    unsafe { core::ptr::copy_nonoverlapping(wide.as_ptr(), target.Buffer, wide.len()) };
    target.Length = bytes16 - 2;
    STATUS_SUCCESS
}

/// WdfRegistryClose: closes and deletes the key object.
pub(crate) unsafe extern "win64" fn wdf_registry_close(_g: *mut WDF_DRIVER_GLOBALS, key: WDFKEY) {
    const ROUTINE: &str = "WdfRegistryClose";
    thread::require_at_most(ROUTINE, PASSIVE);
    let raw = key.as_raw() as usize;
    with_object(raw, &[Kind::Key], ROUTINE, |_| ());
    object::delete_tree(raw);
}
