//! The I/O manager: device objects and their names, symbolic links, handles (file objects) and
//! the host's I/O — open with an access check against the device's security descriptor,
//! Device-control IRPs — METHOD_BUFFERED with one system buffer, METHOD_IN_DIRECT /
//! METHOD_OUT_DIRECT with the input in a system buffer and the caller's output buffer locked for
//! the request's life and described by an MDL (Irp->MdlAddress) — cancellation, cleanup and close.
//!
//! Every request is an IRP handed to the device's driver through its DRIVER_OBJECT's
//! MajorFunction table, as IoCallDriver does: IRP_MJ_CREATE at open, IRP_MJ_CLEANUP when the
//! handle closes, IRP_MJ_CLOSE when the file object's last request is done, IRP_MJ_DEVICE_CONTROL
//! per DeviceIoControl. A KMDF driver's table holds the framework's routines
//! (`wdf::dispatch`); an entry nobody set answers STATUS_INVALID_DEVICE_REQUEST.

mod control;
mod devices;
mod files;

// Keys are addresses and small ids: a fast non-cryptographic hash (no peer chooses them).
use rustc_hash::FxHashMap as HashMap;
use std::sync::{Arc, Condvar, Mutex};

use ksys::io::{
    DEVICE_OBJECT, DRIVER_OBJECT, FILE_OBJECT, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE,
    IRP_MJ_DEVICE_CONTROL, METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT,
};
use ksys::ntdef::{
    NTSTATUS, STATUS_ACCESS_DENIED, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER, STATUS_NO_SUCH_DEVICE, STATUS_NOT_SUPPORTED,
    STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_PENDING,
};

use crate::bugcheck::{bugcheck, codes, verifier};
use crate::ke::pool::Owner;
use crate::leaks::{Leak, LeakKind, Site};
use crate::sddl::{
    Caller, FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_READ_DATA, FILE_WRITE_DATA,
    SecurityDescriptor,
};
use crate::thread;

/// Size of a DEVICE_OBJECT on x64 (opaque to drivers).
const DEVICE_OBJECT_SIZE: usize = 0x150;
/// Size of a FILE_OBJECT on x64.
const FILE_OBJECT_SIZE: usize = 0xD8;
/// Largest buffer kemu accepts for one IOCTL (the I/O manager's own limit is pool-bound).
pub const MAX_IOCTL_BUFFER: usize = 16 << 20;
/// Tag of the system buffers kemu allocates for METHOD_BUFFERED I/O.
const SYSTEM_BUFFER_TAG: u32 = u32::from_le_bytes(*b"IoSB");

struct DeviceEntry {
    name: Option<String>,
    descriptor: SecurityDescriptor,
    exclusive: bool,
    initializing: bool,
    deleted: bool,
    references: usize,
    wdf_device: usize,
    /// The DRIVER_OBJECT whose MajorFunction table serves the device.
    driver_object: usize,
    /// IoCreateDevice's device extension (0: none), freed with the device object.
    extension: (usize, usize),
    open_files: usize,
}

struct FileEntry {
    device: usize,
    outstanding: usize,
    cleaned_up: bool,
}

struct HandleEntry {
    file_object: usize,
    granted: u32,
    site: Site,
}

#[derive(Default)]
struct IoState {
    devices: HashMap<usize, DeviceEntry>,
    names: HashMap<String, usize>,
    links: HashMap<String, String>,
    files: HashMap<usize, FileEntry>,
    handles: HashMap<u64, HandleEntry>,
    next_handle: u64,
}

/// The outcome of one device-control request, as DeviceIoControl reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoResult {
    /// Final NTSTATUS.
    pub status: NTSTATUS,
    /// IoStatus.Information (bytes returned for METHOD_BUFFERED).
    pub information: usize,
    /// The caller's output buffer after completion (its full requested length; only the first
    /// `information` bytes were written by the I/O manager). Shared, so a waiter that looks
    /// again (or several waiters) get the same buffer without copying it.
    pub output: std::sync::Arc<Vec<u8>>,
}

/// Where a pending request's completion lands.
#[derive(Default)]
pub(crate) struct IoSlot {
    pub result: Mutex<Option<IoResult>>,
    pub done: Condvar,
    /// Host threads asleep on `done`, changed only under the `result` lock: a request that
    /// completes on its caller's own thread (most do) wakes no one and needs no futex call.
    pub waiters: std::sync::atomic::AtomicUsize,
    /// The IRP and its id while in flight (for cancellation).
    pub irp: Mutex<Option<(usize, u64)>>,
}

/// The I/O manager of one kernel.
#[derive(Default)]
pub(crate) struct IoManager {
    state: Mutex<IoState>,
}

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Maps a DOS path the way Win32 does: `\\.\X` and `\??\X` are `\DosDevices\X`.
fn dos_link(path: &str) -> String {
    let stripped = path
        .strip_prefix("\\\\.\\")
        .or_else(|| path.strip_prefix("\\??\\"))
        .or_else(|| path.strip_prefix("\\DosDevices\\"))
        .or_else(|| path.strip_prefix("\\GLOBAL??\\"))
        .unwrap_or(path);
    key(&format!("\\DosDevices\\{stripped}"))
}

impl IoManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, IoState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open handles, as leaks.
    pub fn leaks(&self) -> Vec<Leak> {
        self.lock()
            .handles
            .iter()
            .map(|(&h, e)| Leak {
                kind: LeakKind::Handle,
                address: h as usize,
                tag: format!("handle to file object {:#x}", e.file_object),
                size: 0,
                site: e.site.clone(),
            })
            .collect()
    }
}
