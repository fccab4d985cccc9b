//! The export registry: every routine kemu provides, once, under (module, export name), each
//! type-checked against the ksys declaration of the import it satisfies. Native mode binds the
//! driver's ksys import slots through it; a PE loader binds an image's import table through it.

use std::ffi::c_void;
use std::sync::OnceLock;

use ksys::import::ImportEntry;

use crate::io::{device, irp, mdl, workitem};
use crate::ke::{pool, sync, timer};
use crate::{ksecdd, netio, rtl, wdf};

/// One exported routine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    /// Module as Windows names it (compared case-insensitively).
    pub module: &'static str,
    /// Export name.
    pub name: &'static str,
    /// Address of kemu's `extern "win64"` implementation.
    pub address: usize,
}

macro_rules! registry {
    ($( $module:literal { $( $export:literal : $pfn:ident => $imp:path, )* } )*) => {
        vec![ $($( {
            let f: ksys::imports::pfn::$pfn = $imp;
            Export { module: $module, name: $export, address: f as usize }
        }, )*)* ]
    };
}

/// Every export kemu provides.
pub fn exports() -> &'static [Export] {
    static EXPORTS: OnceLock<Vec<Export>> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        // Exported by ksecdd but not imported by ksys until a real export table confirms it.
        let requires_notify: unsafe extern "win64" fn(*mut ksys::sspi::SspiAsyncContext) -> u8 = ksecdd::sspi_async_context_requires_notify;
        let mut all = registry! {
            "ntoskrnl.exe" {
                "ExAllocatePool2": ExAllocatePool2 => pool::ex_allocate_pool2,
                "ExFreePoolWithTag": ExFreePoolWithTag => pool::ex_free_pool_with_tag,
                "ExFreePool": ExFreePool => pool::ex_free_pool,
                "KeGetCurrentIrql": KeGetCurrentIrql => sync::ke_get_current_irql,
                "KeAcquireSpinLockRaiseToDpc": KeAcquireSpinLockRaiseToDpc => sync::ke_acquire_spin_lock_raise_to_dpc,
                "KeReleaseSpinLock": KeReleaseSpinLock => sync::ke_release_spin_lock,
                "KeAcquireSpinLockAtDpcLevel": KeAcquireSpinLockAtDpcLevel => sync::ke_acquire_spin_lock_at_dpc_level,
                "KeReleaseSpinLockFromDpcLevel": KeReleaseSpinLockFromDpcLevel => sync::ke_release_spin_lock_from_dpc_level,
                "KeInitializeEvent": KeInitializeEvent => sync::ke_initialize_event,
                "KeSetEvent": KeSetEvent => sync::ke_set_event,
                "KeClearEvent": KeClearEvent => sync::ke_clear_event,
                "KeWaitForSingleObject": KeWaitForSingleObject => sync::ke_wait_for_single_object,
                "KeDelayExecutionThread": KeDelayExecutionThread => sync::ke_delay_execution_thread,
                "KeInitializeTimer": KeInitializeTimer => timer::ke_initialize_timer,
                "KeSetTimer": KeSetTimer => timer::ke_set_timer,
                "KeCancelTimer": KeCancelTimer => timer::ke_cancel_timer,
                "KeInitializeDpc": KeInitializeDpc => timer::ke_initialize_dpc,
                "KeQueryUnbiasedInterruptTime": KeQueryUnbiasedInterruptTime => sync::ke_query_unbiased_interrupt_time,
                "KeBugCheckEx": KeBugCheckEx => rtl::ke_bug_check_ex,
                "IoAllocateIrp": IoAllocateIrp => irp::io_allocate_irp,
                "IoFreeIrp": IoFreeIrp => irp::io_free_irp,
                "IoReuseIrp": IoReuseIrp => irp::io_reuse_irp,
                "IofCompleteRequest": IofCompleteRequest => irp::iof_complete_request,
                "IoCreateDevice": IoCreateDevice => device::io_create_device,
                "IoDeleteDevice": IoDeleteDevice => device::io_delete_device,
                "IoCreateSymbolicLink": IoCreateSymbolicLink => device::io_create_symbolic_link,
                "IoDeleteSymbolicLink": IoDeleteSymbolicLink => device::io_delete_symbolic_link,
                "IoCancelIrp": IoCancelIrp => irp::io_cancel_irp,
                "IoSetCompletionRoutineEx": IoSetCompletionRoutineEx => irp::io_set_completion_routine_ex,
                "IoAllocateMdl": IoAllocateMdl => mdl::io_allocate_mdl,
                "MmBuildMdlForNonPagedPool": MmBuildMdlForNonPagedPool => mdl::mm_build_mdl_for_non_paged_pool,
                "IoFreeMdl": IoFreeMdl => mdl::io_free_mdl,
                "IoAllocateWorkItem": IoAllocateWorkItem => workitem::io_allocate_work_item,
                "IoQueueWorkItem": IoQueueWorkItem => workitem::io_queue_work_item,
                "IoFreeWorkItem": IoFreeWorkItem => workitem::io_free_work_item,
                "RtlInitUnicodeString": RtlInitUnicodeString => rtl::rtl_init_unicode_string,
                "RtlGetVersion": RtlGetVersion => rtl::rtl_get_version,
                "vDbgPrintEx": vDbgPrintEx => rtl::v_dbg_print_ex,
            }
            "ksecdd.sys" {
                "SspiCreateAsyncContext": SspiCreateAsyncContext => ksecdd::sspi_create_async_context,
                "SspiFreeAsyncContext": SspiFreeAsyncContext => ksecdd::sspi_free_async_context,
                "SspiReinitAsyncContext": SspiReinitAsyncContext => ksecdd::sspi_reinit_async_context,
                "SspiSetAsyncNotifyCallback": SspiSetAsyncNotifyCallback => ksecdd::sspi_set_async_notify_callback,
                "SspiGetAsyncCallStatus": SspiGetAsyncCallStatus => ksecdd::sspi_get_async_call_status,
                "SspiAcquireCredentialsHandleAsyncW": SspiAcquireCredentialsHandleAsyncW => ksecdd::sspi_acquire_credentials_handle_async_w,
                "SspiFreeCredentialsHandleAsync": SspiFreeCredentialsHandleAsync => ksecdd::sspi_free_credentials_handle_async,
                "SspiInitializeSecurityContextAsyncW": SspiInitializeSecurityContextAsyncW => ksecdd::sspi_initialize_security_context_async_w,
                "SspiAcceptSecurityContextAsync": SspiAcceptSecurityContextAsync => ksecdd::sspi_accept_security_context_async,
                "SspiDeleteSecurityContextAsync": SspiDeleteSecurityContextAsync => ksecdd::sspi_delete_security_context_async,
                "QueryContextAttributesW": QueryContextAttributesW => ksecdd::query_context_attributes_w,
                "FreeContextBuffer": FreeContextBuffer => ksecdd::free_context_buffer,
                "DeleteSecurityContext": DeleteSecurityContext => ksecdd::delete_security_context,
                "FreeCredentialsHandle": FreeCredentialsHandle => ksecdd::free_credentials_handle,
                "ApplyControlToken": ApplyControlToken => ksecdd::apply_control_token,
                "SetCredentialsAttributesW": SetCredentialsAttributesW => ksecdd::set_credentials_attributes_w,
                "SealMessage": EncryptMessage => ksecdd::encrypt_message,
                "UnsealMessage": DecryptMessage => ksecdd::decrypt_message,
            }
            "NETIO.SYS" {
                "WskRegister": WskRegister => netio::wsk_register,
                "WskDeregister": WskDeregister => netio::wsk_deregister,
                "WskCaptureProviderNPI": WskCaptureProviderNPI => netio::wsk_capture_provider_npi,
                "WskReleaseProviderNPI": WskReleaseProviderNPI => netio::wsk_release_provider_npi,
                "WskQueryProviderCharacteristics": WskQueryProviderCharacteristics => netio::wsk_query_provider_characteristics,
            }
            "WDFLDR.SYS" {
                "WdfVersionBind": WdfVersionBind => wdf::bind::wdf_version_bind,
                "WdfVersionUnbind": WdfVersionUnbind => wdf::bind::wdf_version_unbind,
            }
        };
        all.push(Export { module: "ksecdd.sys", name: "SspiAsyncContextRequiresNotify", address: requires_notify as usize });
        // The C runtime a driver image imports from ntoskrnl.exe (PE mode only).
        type Copy = unsafe extern "win64" fn(*mut c_void, *const c_void, usize) -> *mut c_void;
        let (memcpy, memmove): (Copy, Copy) = (crate::crt::memcpy, crate::crt::memmove);
        let memset: unsafe extern "win64" fn(*mut c_void, i32, usize) -> *mut c_void = crate::crt::memset;
        let memcmp: unsafe extern "win64" fn(*const c_void, *const c_void, usize) -> i32 = crate::crt::memcmp;
        let strlen: unsafe extern "win64" fn(*const u8) -> usize = crate::crt::strlen;
        for (name, address) in [("memcpy", memcpy as usize), ("memmove", memmove as usize), ("memset", memset as usize), ("memcmp", memcmp as usize), ("strlen", strlen as usize), ("__chkstk", crate::crt::chkstk_address())] {
            all.push(Export { module: "ntoskrnl.exe", name, address });
        }
        all
    })
}

/// The address kemu exports as `module!name`, if any.
pub fn resolve(module: &str, name: &str) -> Option<usize> {
    exports()
        .iter()
        .find(|e| e.module.eq_ignore_ascii_case(module) && e.name == name)
        .map(|e| e.address)
}

/// Binds a natively linked driver's import slots (process-wide; idempotent); returns the imports
/// kemu does not provide (left unbound: calling one stops the kernel with a bugcheck naming it).
pub fn bind_native(directory: &[ImportEntry]) -> Vec<String> {
    let mut unbound = Vec::new();
    for entry in directory {
        match (resolve(entry.module, entry.name), entry.slot) {
            (Some(address), Some(slot)) => {
                slot.store(address as *mut (), std::sync::atomic::Ordering::Release)
            }
            _ => unbound.push(format!("{}!{}", entry.module, entry.name)),
        }
    }
    unbound
}

/// Whether KMDF table entry `index` is implemented.
pub fn wdf_function_implemented(index: usize) -> bool {
    wdf::bind::is_implemented(index)
}
