//! How a kernel routine is imported, in both worlds, from one declaration.
//!
//! [`kernel_imports!`] takes each routine's module, name and signature once and produces:
//! - on `x86_64-pc-windows-msvc`: a `raw-dylib` extern block per module, so the linker writes a
//!   real import table entry (`ksecdd.sys!SealMessage`, ...) with no import library;
//! - on every other target: a function of the same name and signature that calls through a slot
//!   filled at load time by the host kernel (kemu) from its (module, name) registry — the same
//!   registry a PE loader binds an image's import table through;
//! - on both targets: `pfn::<Name>`, the routine's function-pointer type (kemu's implementations
//!   are checked against it at compile time), and [`IMPORT_DIRECTORY`](crate::imports::IMPORT_DIRECTORY),
//!   the signature list of every import.

use core::sync::atomic::AtomicPtr;

/// One imported routine: where it comes from and the signature ksys declares for it.
#[derive(Debug)]
pub struct ImportEntry {
    /// Module that exports the routine, as written in the image's import table.
    pub module: &'static str,
    /// Export name (differs from the Rust name for EncryptMessage/DecryptMessage).
    pub name: &'static str,
    /// Name the driver calls it by.
    pub rust_name: &'static str,
    /// Parameter types as declared, for the signature cross-checks.
    pub params: &'static [&'static str],
    /// Return type as declared ("()" for none).
    pub ret: &'static str,
    /// Host builds: the slot the routine's address is bound into. Windows builds: `None`.
    pub slot: Option<&'static AtomicPtr<()>>,
}

/// Declares kernel imports; see the module documentation.
#[macro_export]
macro_rules! kernel_imports {
    ($(
        module $module:literal {
            $(
                $(#[doc = $doc:literal])*
                $(#[link_name = $link:literal])?
                pub fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? ;
            )*
        }
    )*) => {
        /// Function-pointer types of every import (one ABI for both worlds).
        pub mod pfn {
            #[allow(unused_imports)]
            use super::*;
            $($(
                #[allow(non_camel_case_types)]
                #[doc = concat!("Signature of `", $module, "!", stringify!($name), "`.")]
                pub type $name = unsafe extern "win64" fn($($ty),*) $(-> $ret)?;
            )*)*
        }

        $(
            #[cfg(windows)]
            #[link(name = $module, kind = "raw-dylib", modifiers = "+verbatim")]
            unsafe extern "win64" {
                $(
                    $(#[doc = $doc])*
                    $(#[link_name = $link])?
                    pub fn $name($($arg: $ty),*) $(-> $ret)?;
                )*
            }
        )*

        #[cfg(windows)]
        const _: () = {
            $($( let _: pfn::$name = $name; )*)*
        };

        /// Host builds: the slots the host kernel binds each import into.
        #[cfg(not(windows))]
        #[allow(non_snake_case)]
        #[derive(Debug)]
        pub struct ImportSlots {
            $($( pub $name: ::core::sync::atomic::AtomicPtr<()>, )*)*
        }

        /// Host builds: every import's bound address (null until the host kernel binds it).
        #[cfg(not(windows))]
        pub static IMPORT_SLOTS: ImportSlots = ImportSlots {
            $($( $name: ::core::sync::atomic::AtomicPtr::new(::core::ptr::null_mut()), )*)*
        };

        $($(
            $(#[doc = $doc])*
            ///
            /// # Safety
            /// The routine's documented contract (arguments, IRQL) must hold.
            #[cfg(not(windows))]
            #[allow(non_snake_case, clippy::too_many_arguments)]
            pub unsafe extern "win64" fn $name($($arg: $ty),*) $(-> $ret)? {
                let raw = IMPORT_SLOTS.$name.load(::core::sync::atomic::Ordering::Acquire);
                if raw.is_null() {
                    $crate::import::unbound($module, [$($link,)? stringify!($name)][0]);
                }
                // SAFETY: the slot only ever holds an address the host kernel registered for this
                // (module, name), and the host's registry pins it to `pfn::$name` at compile time.
                let f: pfn::$name = unsafe { ::core::mem::transmute::<*mut (), pfn::$name>(raw) };
                // SAFETY: forwarded contract of this very function.
                unsafe { f($($arg),*) }
            }
        )*)*

        /// Every import ksys declares, compiled on both targets (the signature list).
        pub static IMPORT_DIRECTORY: &[$crate::import::ImportEntry] = &[
            $($(
                $crate::import::ImportEntry {
                    module: $module,
                    name: [$($link,)? stringify!($name)][0],
                    rust_name: stringify!($name),
                    params: &[$(stringify!($ty)),*],
                    ret: [$(stringify!($ret),)? "()"][0],
                    #[cfg(not(windows))]
                    slot: Some(&IMPORT_SLOTS.$name),
                    #[cfg(windows)]
                    slot: None,
                },
            )*)*
        ];
    };
}

/// Host builds: an import was called before the host kernel bound it — a host bug, so stop.
#[cfg(not(windows))]
#[cold]
pub fn unbound(module: &str, name: &str) -> ! {
    panic!("kernel import {module}!{name} called before the host kernel bound it")
}
