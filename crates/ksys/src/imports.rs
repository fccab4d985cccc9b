//! Every kernel routine wsktls imports, declared once (see [`crate::import`] for how).
//!
//! Module names are written exactly as the real images are named; the Windows loader compares
//! them case-insensitively. Names that are macros or FORCEINLINE in the WDK headers are not
//! exports and live in [`crate::io`] / [`crate::ntdef`] as Rust functions instead.

#![allow(non_snake_case)]

use core::ffi::c_void;

use crate::io::{
    DEVICE_OBJECT, IO_WORKITEM, IRP, KEVENT, MDL, PIO_COMPLETION_ROUTINE, PIO_WORKITEM_ROUTINE,
};
use crate::ktimer::{KDPC, KTIMER, PKDEFERRED_ROUTINE};
use crate::ntdef::{KIRQL, KSPIN_LOCK, NTSTATUS, RTL_OSVERSIONINFOW, UNICODE_STRING};
use crate::sspi::{
    SECURITY_STATUS, SecBufferDesc, SecHandle, SspiAsyncContext, SspiAsyncNotifyCallback, TimeStamp,
};
use crate::wdf::types::{WDF_BIND_INFO, WDF_DRIVER_GLOBALS};
use crate::wsk::{
    WSK_CLIENT_NPI, WSK_PROVIDER_CHARACTERISTICS, WSK_PROVIDER_NPI, WSK_REGISTRATION,
};
use crate::{DRIVER_OBJECT, kernel_imports};

kernel_imports! {
    module "ntoskrnl.exe" {
        /// Pool allocation (Windows 10 2004+); zeroed unless POOL_FLAG_UNINITIALIZED.
        pub fn ExAllocatePool2(flags: u64, size: usize, tag: u32) -> *mut c_void;
        pub fn ExFreePoolWithTag(p: *mut c_void, tag: u32);
        /// The running Windows version (PASSIVE_LEVEL).
        pub fn RtlGetVersion(info: *mut RTL_OSVERSIONINFOW) -> NTSTATUS;
        pub fn ExFreePool(p: *mut c_void);
        pub fn KeGetCurrentIrql() -> KIRQL;
        pub fn KeAcquireSpinLockRaiseToDpc(lock: *mut KSPIN_LOCK) -> KIRQL;
        pub fn KeReleaseSpinLock(lock: *mut KSPIN_LOCK, old_irql: KIRQL);
        pub fn KeAcquireSpinLockAtDpcLevel(lock: *mut KSPIN_LOCK);
        pub fn KeReleaseSpinLockFromDpcLevel(lock: *mut KSPIN_LOCK);
        pub fn KeInitializeEvent(event: *mut KEVENT, kind: u32, state: u8);
        pub fn KeSetEvent(event: *mut KEVENT, increment: i32, wait: u8) -> i32;
        pub fn KeClearEvent(event: *mut KEVENT);
        pub fn KeWaitForSingleObject(object: *mut c_void, reason: u32, mode: i8, alertable: u8, timeout: *const i64) -> NTSTATUS;
        pub fn KeDelayExecutionThread(mode: i8, alertable: u8, interval: *const i64) -> NTSTATUS;
        pub fn KeInitializeTimer(timer: *mut KTIMER);
        pub fn KeSetTimer(timer: *mut KTIMER, due_time: i64, dpc: *mut KDPC) -> u8;
        pub fn KeCancelTimer(timer: *mut KTIMER) -> u8;
        pub fn KeInitializeDpc(dpc: *mut KDPC, routine: PKDEFERRED_ROUTINE, context: *mut c_void);
        /// Interrupt time in 100 ns units, excluding time asleep (monotonic; for timeouts).
        pub fn KeQueryUnbiasedInterruptTime() -> u64;
        pub fn KeBugCheckEx(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) -> !;
        pub fn IoAllocateIrp(stack_size: i8, charge_quota: u8) -> *mut IRP;
        pub fn IoFreeIrp(irp: *mut IRP);
        pub fn IoReuseIrp(irp: *mut IRP, status: NTSTATUS);
        pub fn IofCompleteRequest(irp: *mut IRP, priority_boost: i8);
        pub fn IoCreateDevice(driver: *mut DRIVER_OBJECT, extension_size: u32, name: *mut UNICODE_STRING, device_type: u32, characteristics: u32, exclusive: u8, device: *mut *mut DEVICE_OBJECT) -> NTSTATUS;
        pub fn IoDeleteDevice(device: *mut DEVICE_OBJECT);
        pub fn IoCreateSymbolicLink(link: *mut UNICODE_STRING, target: *mut UNICODE_STRING) -> NTSTATUS;
        pub fn IoDeleteSymbolicLink(link: *mut UNICODE_STRING) -> NTSTATUS;
        pub fn IoCancelIrp(irp: *mut IRP) -> u8;
        pub fn IoSetCompletionRoutineEx(device: *mut DEVICE_OBJECT, irp: *mut IRP, routine: PIO_COMPLETION_ROUTINE, context: *mut c_void, on_success: u8, on_error: u8, on_cancel: u8) -> NTSTATUS;
        pub fn IoAllocateMdl(va: *mut c_void, length: u32, secondary: u8, charge_quota: u8, irp: *mut IRP) -> *mut MDL;
        pub fn MmBuildMdlForNonPagedPool(mdl: *mut MDL);
        pub fn IoFreeMdl(mdl: *mut MDL);
        pub fn IoAllocateWorkItem(device: *mut DEVICE_OBJECT) -> *mut IO_WORKITEM;
        pub fn IoQueueWorkItem(work_item: *mut IO_WORKITEM, routine: PIO_WORKITEM_ROUTINE, queue: i32, context: *mut c_void);
        pub fn IoFreeWorkItem(work_item: *mut IO_WORKITEM);
        pub fn RtlInitUnicodeString(destination: *mut UNICODE_STRING, source: *const u16);
        /// Debug output; `args` is a win64 va_list (an array of 8-byte argument slots).
        pub fn vDbgPrintEx(component: u32, level: u32, format: *const u8, args: *const usize) -> u32;
    }
    module "ksecdd.sys" {
        pub fn SspiCreateAsyncContext() -> *mut SspiAsyncContext;
        pub fn SspiFreeAsyncContext(context: *mut SspiAsyncContext);
        pub fn SspiReinitAsyncContext(context: *mut SspiAsyncContext) -> NTSTATUS;
        pub fn SspiSetAsyncNotifyCallback(context: *mut SspiAsyncContext, callback: SspiAsyncNotifyCallback, data: *mut c_void) -> SECURITY_STATUS;
        pub fn SspiGetAsyncCallStatus(context: *mut SspiAsyncContext) -> SECURITY_STATUS;
        pub fn SspiAcquireCredentialsHandleAsyncW(context: *mut SspiAsyncContext, principal: *const UNICODE_STRING, package: *const UNICODE_STRING, credential_use: u32, logon_id: *mut c_void, auth_data: *mut c_void, get_key_fn: *mut c_void, get_key_argument: *mut c_void, credential: *mut SecHandle, expiry: *mut TimeStamp) -> SECURITY_STATUS;
        pub fn SspiFreeCredentialsHandleAsync(context: *mut SspiAsyncContext, credential: *mut SecHandle) -> SECURITY_STATUS;
        pub fn SspiInitializeSecurityContextAsyncW(context: *mut SspiAsyncContext, credential: *mut SecHandle, security_context: *mut SecHandle, target: *const UNICODE_STRING, requirements: u32, reserved1: u32, data_rep: u32, input: *mut SecBufferDesc, reserved2: u32, new_context: *mut SecHandle, output: *mut SecBufferDesc, attributes: *mut u32, expiry: *mut TimeStamp) -> SECURITY_STATUS;
        pub fn SspiAcceptSecurityContextAsync(context: *mut SspiAsyncContext, credential: *mut SecHandle, security_context: *mut SecHandle, input: *mut SecBufferDesc, requirements: u32, data_rep: u32, new_context: *mut SecHandle, output: *mut SecBufferDesc, attributes: *mut u32, expiry: *mut TimeStamp) -> SECURITY_STATUS;
        pub fn SspiDeleteSecurityContextAsync(context: *mut SspiAsyncContext, security_context: *mut SecHandle) -> SECURITY_STATUS;
        pub fn QueryContextAttributesW(security_context: *mut SecHandle, attribute: u32, buffer: *mut c_void) -> SECURITY_STATUS;
        pub fn FreeContextBuffer(buffer: *mut c_void) -> SECURITY_STATUS;
        pub fn DeleteSecurityContext(security_context: *mut SecHandle) -> SECURITY_STATUS;
        pub fn FreeCredentialsHandle(credential: *mut SecHandle) -> SECURITY_STATUS;
        pub fn ApplyControlToken(security_context: *mut SecHandle, input: *mut SecBufferDesc) -> SECURITY_STATUS;
        pub fn SetCredentialsAttributesW(credential: *mut SecHandle, attribute: u32, buffer: *mut c_void, size: u32) -> SECURITY_STATUS;
        /// EncryptMessage: ksecdd.sys exports it as SealMessage.
        #[link_name = "SealMessage"]
        pub fn EncryptMessage(security_context: *mut SecHandle, qop: u32, message: *mut SecBufferDesc, sequence: u32) -> SECURITY_STATUS;
        /// DecryptMessage: ksecdd.sys exports it as UnsealMessage.
        #[link_name = "UnsealMessage"]
        pub fn DecryptMessage(security_context: *mut SecHandle, message: *mut SecBufferDesc, sequence: u32, qop: *mut u32) -> SECURITY_STATUS;
    }
    module "NETIO.SYS" {
        pub fn WskRegister(client: *const WSK_CLIENT_NPI, registration: *mut WSK_REGISTRATION) -> NTSTATUS;
        pub fn WskDeregister(registration: *mut WSK_REGISTRATION);
        pub fn WskCaptureProviderNPI(registration: *mut WSK_REGISTRATION, wait_ms: u32, provider: *mut WSK_PROVIDER_NPI) -> NTSTATUS;
        pub fn WskReleaseProviderNPI(registration: *mut WSK_REGISTRATION);
        pub fn WskQueryProviderCharacteristics(registration: *mut WSK_REGISTRATION, characteristics: *mut WSK_PROVIDER_CHARACTERISTICS) -> NTSTATUS;
    }
    module "WDFLDR.SYS" {
        pub fn WdfVersionBind(driver: *mut DRIVER_OBJECT, registry_path: *mut UNICODE_STRING, bind_info: *mut WDF_BIND_INFO, globals: *mut *mut WDF_DRIVER_GLOBALS) -> NTSTATUS;
        pub fn WdfVersionUnbind(registry_path: *mut UNICODE_STRING, bind_info: *mut WDF_BIND_INFO, globals: *mut WDF_DRIVER_GLOBALS) -> NTSTATUS;
    }
}

// Routines LLVM emits calls to on its own (copies, zeroing, stack probes), and strlen, which
// liballoc's C-string support references. With no default
// libraries they must come from ntoskrnl.exe; only the ones actually referenced are imported.
#[cfg(windows)]
#[allow(dead_code)]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    fn memcpy(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void;
    fn memmove(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void;
    fn memset(dst: *mut c_void, value: i32, n: usize) -> *mut c_void;
    fn memcmp(a: *const c_void, b: *const c_void, n: usize) -> i32;
    fn strlen(s: *const u8) -> usize;
    fn __chkstk();
}
