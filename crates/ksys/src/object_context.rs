//! Typed framework object contexts: a Rust value kept in a KMDF object's context
//! (WdfObjectAllocateContext), reached from any callback that has the object's handle, and
//! dropped by the framework's EvtDestroyCallback for that context when the object goes — so a
//! driver keeps its state with its device instead of in statics.
//!
//! Declare one with [`crate::kmdf_context!`]; [`Context::attach`] moves a value in,
//! [`Context::with`] lends it.

use core::ffi::c_void;
use core::marker::PhantomData;
use core::ptr;

use crate::ntdef::*;
use crate::wdf::functions::{WdfObjectAllocateContext, WdfObjectGetTypedContextWorker};
use crate::wdf::types::*;

/// The type of one context: its framework type info and the destroy routine that drops the
/// value. Made by [`crate::kmdf_context!`] only.
pub struct Context<T> {
    #[doc(hidden)]
    pub info: WDF_OBJECT_CONTEXT_TYPE_INFO,
    #[doc(hidden)]
    pub destroy: extern "win64" fn(WDFOBJECT),
    #[doc(hidden)]
    pub marker: PhantomData<fn() -> T>,
}

/// Declares a context type holding a `T`:
/// `kmdf_context!(static SERVICE: Service);` then `SERVICE.attach(object, value)` and
/// `SERVICE.with(object, |s| ...)`.
#[macro_export]
macro_rules! kmdf_context {
    ($(#[$meta:meta])* $vis:vis static $name:ident: $ty:ty;) => {
        $(#[$meta])*
        $vis static $name: $crate::object_context::Context<$ty> =
            $crate::object_context::Context {
                info: $crate::wdf::types::WDF_OBJECT_CONTEXT_TYPE_INFO {
                    Size: ::core::mem::size_of::<$crate::wdf::types::WDF_OBJECT_CONTEXT_TYPE_INFO>()
                        as u32,
                    ContextName: concat!(stringify!($name), "\0").as_ptr(),
                    ContextSize: ::core::mem::size_of::<$ty>(),
                    UniqueType: &$name.info,
                    EvtDriverGetUniqueContextType: ::core::ptr::null(),
                },
                destroy: {
                    extern "win64" fn destroy(object: $crate::wdf::types::WDFOBJECT) {
                        $name.drop_in(object);
                    }
                    destroy
                },
                marker: ::core::marker::PhantomData,
            };
    };
}

impl<T: Send + Sync> Context<T> {
    /// Allocates this context on `object` and moves `value` into it; the framework drops it
    /// (EvtDestroyCallback) when the object is destroyed. Err (and `value` dropped) if the
    /// object has this context already or pool ran out.
    pub fn attach(&'static self, object: WDFOBJECT, value: T) -> Result<(), NTSTATUS> {
        const {
            assert!(
                core::mem::align_of::<T>() <= 16,
                "framework contexts are 16-byte aligned"
            )
        };
        let mut attributes = WDF_OBJECT_ATTRIBUTES::init();
        attributes.ContextTypeInfo = &self.info;
        attributes.EvtDestroyCallback = Some(self.destroy);
        let mut context: *mut c_void = ptr::null_mut();
        // SAFETY: a live framework object (the caller's handle); the attributes and out-param
        // are locals; the type info is a static.
        check(unsafe { WdfObjectAllocateContext(object, &mut attributes, &mut context) })?;
        if context.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        // SAFETY: the framework allocated ContextSize = size_of::<T>() bytes, 16-byte aligned,
        // for this context alone; nothing reads it before this write.
        unsafe { (context as *mut T).write(value) };
        Ok(())
    }

    /// Lends the value attached to `object` to `use_it`; None if none is attached.
    pub fn with<R>(&'static self, object: WDFOBJECT, use_it: impl FnOnce(&T) -> R) -> Option<R> {
        // SAFETY: a live framework object (a handle the framework passed to the caller's
        // callback, or one the caller keeps alive); the type info is a static.
        let context = unsafe { WdfObjectGetTypedContextWorker(object, &self.info) };
        if context.is_null() {
            return None;
        }
        // SAFETY: a non-NULL context of this type holds the T `attach` wrote, alive until the
        // object's destroy callback, which cannot run while a caller still uses the object.
        Some(use_it(unsafe { &*(context as *const T) }))
    }

    /// The destroy callback's work: drops the value in place.
    #[doc(hidden)]
    pub fn drop_in(&'static self, object: WDFOBJECT) {
        // SAFETY: the object is being destroyed; its context of this type (if allocated)
        // holds the value `attach` wrote, dropped once here.
        unsafe {
            let context = WdfObjectGetTypedContextWorker(object, &self.info);
            if !context.is_null() {
                ptr::drop_in_place(context as *mut T);
            }
        }
    }
}

fn check(status: NTSTATUS) -> Result<(), NTSTATUS> {
    if nt_success(status) {
        Ok(())
    } else {
        Err(status)
    }
}
