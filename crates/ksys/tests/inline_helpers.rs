//! The WDK's header-only helpers, rebuilt in Rust, against the x64 IRP layout.

use core::ffi::c_void;
use ksys::io::*;
use ksys::ntdef::*;

unsafe extern "win64" fn routine(
    _d: *mut DEVICE_OBJECT,
    _i: *mut IRP,
    _c: *mut c_void,
) -> NTSTATUS {
    STATUS_MORE_PROCESSING_REQUIRED
}

#[test]
fn irp_stack_helpers_address_the_right_bytes() {
    const STACK: u8 = 2;
    let size = io_size_of_irp(STACK);
    assert_eq!(size, 0xD0 + 2 * 0x48);
    let mut storage = vec![0u64; size / 8];
    let base = storage.as_mut_ptr() as *mut u8;
    let irp = base as *mut IRP;
    // As IoAllocateIrp leaves it: current location one past the last one.
    // SAFETY: the IRP storage is `size` bytes, 8-aligned and zeroed.
    unsafe {
        (*irp).StackCount = STACK as i8;
        (*irp).CurrentLocation = STACK as i8 + 1;
        (*irp).Tail.CurrentStackLocation = base.add(0xD0 + 2 * 0x48) as *mut IO_STACK_LOCATION;
        assert_eq!(
            io_get_current_irp_stack_location(irp) as usize,
            base as usize + 0x160
        );
        let next = io_get_next_irp_stack_location(irp);
        assert_eq!(next as usize, base as usize + 0xD0 + 0x48);
        io_set_completion_routine(irp, Some(routine), 0x1234 as *mut c_void, true, true, true);
        let slot = base.add(0xD0 + 0x48);
        assert_eq!(
            *slot.add(3),
            SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL
        );
        assert_eq!(*slot.add(3), 0xE0);
        assert_eq!(
            *(slot.add(0x38) as *const usize),
            routine as *const () as usize
        );
        assert_eq!(*(slot.add(0x40) as *const usize), 0x1234);
        io_set_completion_routine(
            irp,
            Some(routine),
            core::ptr::null_mut(),
            false,
            true,
            false,
        );
        assert_eq!(
            *slot.add(3),
            SL_INVOKE_ON_ERROR,
            "control is overwritten, not or-ed"
        );
    }
}

#[test]
fn status_and_ioctl_helpers() {
    assert!(nt_success(STATUS_SUCCESS));
    assert!(
        nt_success(STATUS_PENDING) && nt_success(STATUS_TIMEOUT),
        "NT_SUCCESS accepts informational codes"
    );
    assert!(!nt_success(STATUS_IO_TIMEOUT) && !nt_success(STATUS_CANCELLED));
    assert_eq!(
        ctl_code(
            FILE_DEVICE_UNKNOWN,
            0x800,
            METHOD_BUFFERED,
            FILE_READ_ACCESS | FILE_WRITE_ACCESS
        ),
        0x0022_E000
    );
    let mut lock: KSPIN_LOCK = 7;
    ke_initialize_spin_lock(&mut lock);
    assert_eq!(lock, 0);
    let s = ksys::UNICODE_STRING::from_static(ksys::utf16!("MY"));
    assert_eq!((s.Length, s.MaximumLength), (4, 6));
}

#[test]
fn import_directory_lists_every_routine_once_with_its_export_name() {
    let dir = ksys::imports::IMPORT_DIRECTORY;
    let seal = dir
        .iter()
        .find(|e| e.rust_name == "EncryptMessage")
        .unwrap();
    assert_eq!((seal.module, seal.name), ("ksecdd.sys", "SealMessage"));
    let unseal = dir
        .iter()
        .find(|e| e.rust_name == "DecryptMessage")
        .unwrap();
    assert_eq!(unseal.name, "UnsealMessage");
    let mut names: Vec<(&str, &str)> = dir.iter().map(|e| (e.module, e.name)).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), dir.len(), "duplicate import");
    assert!(
        dir.iter().all(|e| e.slot.is_some()),
        "host builds bind every import through a slot"
    );
    assert!(
        !dir.iter()
            .any(|e| e.name == "SspiAsyncContextRequiresNotify"),
        "not a confirmed export"
    );
    let ach = dir
        .iter()
        .find(|e| e.name == "SspiAcquireCredentialsHandleAsyncW")
        .unwrap();
    assert_eq!(ach.params.len(), 10);
}

/// SecIsValidHandle as sspi.h defines it: a handle is invalid when either word is all ones.
#[test]
fn a_handle_with_either_word_all_ones_is_invalid() {
    use ksys::sspi::SecHandle;
    let handle = |lower, upper| SecHandle {
        dwLower: lower,
        dwUpper: upper,
    };
    assert!(!SecHandle::INVALID.is_valid());
    assert!(!handle(usize::MAX, 7).is_valid());
    assert!(!handle(7, usize::MAX).is_valid());
    assert!(handle(0, 0).is_valid());
    assert!(handle(7, 9).is_valid());
    assert!(
        SecHandle::DELETED.is_valid(),
        "sspi.h tests only the all-ones value"
    );
}
