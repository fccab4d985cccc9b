//! Framework objects: creation with attributes and contexts, parent/child deletion, references,
//! cleanup and destroy callbacks, and the object exports.

use std::ffi::c_void;

use ksys::ntdef::{
    NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_OBJECT_NAME_EXISTS,
    STATUS_SUCCESS,
};
use ksys::wdf::types::*;

use super::{Data, Kind, Object, RequestPlace, WdfState, violation, with_object};
use crate::bugcheck::wdf_violation;
use crate::ke::pool::Owner;
use crate::leaks::{Leak, LeakKind, Site, tag_text};
use crate::thread::{self, DISPATCH, PASSIVE};

/// Bytes kemu charges for an object header (contexts follow).
const HEADER: usize = 0x60;
const HANDLE_BASE: usize = 0x7E5A_0000_0000;

/// Checks an attributes pointer: NULL is allowed; a wrong Size is a violation.
pub(crate) fn attributes(
    attrs: *const WDF_OBJECT_ATTRIBUTES,
    routine: &str,
) -> Option<WDF_OBJECT_ATTRIBUTES> {
    if attrs.is_null() {
        return None;
    }
    // SAFETY: non-NULL attributes point to the driver's structure.
    let a = unsafe { *attrs };
    if a.Size as usize != std::mem::size_of::<WDF_OBJECT_ATTRIBUTES>() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            0,
            format!("{routine}: WDF_OBJECT_ATTRIBUTES.Size is {}", a.Size),
        );
    }
    Some(a)
}

fn context_key(info: *const WDF_OBJECT_CONTEXT_TYPE_INFO) -> usize {
    // SAFETY: the caller passes the driver's static context type info.
    let unique = unsafe { (*info).UniqueType };
    if unique.is_null() {
        info as usize
    } else {
        unique as usize
    }
}

fn context_size(a: &WDF_OBJECT_ATTRIBUTES) -> usize {
    if a.ContextTypeInfo.is_null() {
        return 0;
    }
    // SAFETY: a non-NULL ContextTypeInfo points to the driver's static type info.
    let size = unsafe { (*a.ContextTypeInfo).ContextSize };
    size.max(a.ContextSizeOverride)
}

/// Creates an object under `parent`; `counted` allocations are subject to fault injection.
pub(crate) fn create(
    state: &mut WdfState,
    kind: Kind,
    parent: usize,
    attrs: Option<WDF_OBJECT_ATTRIBUTES>,
    counted: bool,
    data: Data,
) -> Result<usize, NTSTATUS> {
    let kernel = thread::kernel();
    let ctx = attrs.as_ref().map(context_size).unwrap_or(0);
    let size = HEADER + ctx.div_ceil(16) * 16;
    let tag = state.pool_tag;
    let block = kernel
        .pool
        .allocate(size, tag, true, false, Owner::Driver, counted);
    if block.is_null() {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    state.next_handle += 1;
    let handle = HANDLE_BASE + state.next_handle * 0x10;
    let parent_passive = state
        .objects
        .get(&parent)
        .is_some_and(|p| p.passive_callbacks);
    let level = attrs
        .map(|a| a.ExecutionLevel)
        .unwrap_or(WDF_EXECUTION_LEVEL_INHERIT_FROM_PARENT);
    let mut contexts = Vec::new();
    if let Some(a) = attrs.filter(|a| !a.ContextTypeInfo.is_null()) {
        contexts.push((context_key(a.ContextTypeInfo), block as usize + HEADER));
    }
    let object = Object {
        kind,
        parent,
        children: Vec::new(),
        cleanup: attrs.and_then(|a| a.EvtCleanupCallback),
        destroy: attrs.and_then(|a| a.EvtDestroyCallback),
        context_callbacks: Vec::new(),
        contexts,
        blocks: vec![block as usize],
        references: 0,
        deleted: false,
        passive_callbacks: level == WDF_EXECUTION_LEVEL_PASSIVE
            || (level == WDF_EXECUTION_LEVEL_INHERIT_FROM_PARENT && parent_passive),
        site: Site::here(kernel.next_sequence()),
        data,
    };
    state.objects.insert(handle, object);
    if let Some(p) = state.objects.get_mut(&parent) {
        p.children.push(handle);
    }
    Ok(handle)
}

/// Deletes `handle` and its descendants: children first, then kind-specific teardown, then the
/// cleanup callback; the object is destroyed when no reference remains.
pub(crate) fn delete_tree(handle: usize) {
    let kernel = thread::kernel();
    let (children, kind, cleanup, context_cleanups, passive) = {
        let mut state = kernel.wdf.lock();
        let Some(o) = state.objects.get_mut(&handle) else {
            return;
        };
        if o.deleted && o.kind != Kind::Request {
            return;
        }
        o.deleted = true;
        let context_cleanups: Vec<_> = o.context_callbacks.iter().map(|c| c.0).collect();
        (
            o.children.clone(),
            o.kind,
            o.cleanup,
            context_cleanups,
            o.passive_callbacks,
        )
    };
    for child in children.into_iter().rev() {
        delete_tree(child);
    }
    match kind {
        Kind::WorkItem => super::workitem::flush_for_delete(handle),
        Kind::Queue => super::queue::teardown(handle),
        Kind::Device => super::device::teardown(handle),
        _ => {}
    }
    for cb in std::iter::once(cleanup).chain(context_cleanups).flatten() {
        let level = if passive { PASSIVE } else { thread::irql() };
        thread::at_irql(level, || cb(super::handle(handle, WDFOBJECT::from_raw)));
        thread::check_balanced("EvtCleanupCallback", level);
    }
    let destroy_now = {
        let mut state = kernel.wdf.lock();
        let parent = state.objects.get(&handle).map(|o| o.parent).unwrap_or(0);
        if let Some(p) = state.objects.get_mut(&parent) {
            p.children.retain(|&c| c != handle);
        }
        state
            .objects
            .get(&handle)
            .is_some_and(|o| o.references == 0)
    };
    if destroy_now {
        destroy(handle);
    }
}

/// Frees a deleted object with no references left.
pub(crate) fn destroy(handle: usize) {
    let kernel = thread::kernel();
    // The destroy callbacks run while the object and its contexts still exist (a context's
    // own destroy callback reads it, as the framework allows); then the memory goes.
    let callbacks: Vec<_> = {
        let state = kernel.wdf.lock();
        match state.objects.get(&handle) {
            Some(o) => std::iter::once(o.destroy)
                .chain(o.context_callbacks.iter().map(|c| c.1))
                .flatten()
                .collect(),
            None => return,
        }
    };
    for cb in callbacks {
        cb(super::handle(handle, WDFOBJECT::from_raw));
    }
    let (object, tag) = {
        let mut state = kernel.wdf.lock();
        let tag = state.pool_tag;
        match state.objects.remove(&handle) {
            Some(o) => (o, tag),
            None => return,
        }
    };
    for block in object.blocks {
        kernel.pool.free(
            block as *mut u8,
            Some(tag),
            Owner::Driver,
            "framework object destroy",
        );
    }
}

/// Framework objects still alive, as leaks.
pub(crate) fn leaks(state: &WdfState) -> Vec<Leak> {
    state
        .objects
        .iter()
        .map(|(&address, o)| Leak {
            kind: LeakKind::WdfObject,
            address,
            tag: match &o.data {
                Data::Request(r) if r.place != RequestPlace::Completed => format!(
                    "{:?} never completed ('{}')",
                    o.kind,
                    tag_text(state.pool_tag)
                ),
                _ if o.references > 0 => format!(
                    "{:?} with {} reference(s) outstanding",
                    o.kind, o.references
                ),
                _ => format!("{:?}", o.kind),
            },
            size: 0,
            site: o.site.clone(),
        })
        .collect()
}

/// WdfObjectDelete.
pub(crate) unsafe extern "win64" fn wdf_object_delete(
    _g: *mut WDF_DRIVER_GLOBALS,
    object: WDFOBJECT,
) {
    let raw = object.as_raw() as usize;
    let kind = with_object(raw, &[], "WdfObjectDelete", |o| (o.kind, o.deleted));
    match kind {
        (Kind::Device, _) => thread::require_at_most("WdfObjectDelete (device)", PASSIVE),
        _ => thread::require_at_most("WdfObjectDelete", DISPATCH),
    }
    match kind {
        (Kind::Request | Kind::Driver | Kind::File, _) => violation(
            wdf_violation::CANNOT_DELETE,
            raw,
            format!(
                "WdfObjectDelete: a {:?} belongs to the framework and cannot be deleted by the driver",
                kind.0
            ),
        ),
        (_, true) => violation(
            wdf_violation::CANNOT_DELETE,
            raw,
            format!("WdfObjectDelete: {raw:#x} is already deleted"),
        ),
        _ => delete_tree(raw),
    }
}

/// WdfObjectGetTypedContextWorker.
pub(crate) unsafe extern "win64" fn wdf_object_get_typed_context_worker(
    _g: *mut WDF_DRIVER_GLOBALS,
    object: WDFOBJECT,
    info: *const WDF_OBJECT_CONTEXT_TYPE_INFO,
) -> *mut c_void {
    if info.is_null() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            object.as_raw() as usize,
            "WdfObjectGetTypedContextWorker: NULL type info".into(),
        );
    }
    let key = context_key(info);
    with_object(
        object.as_raw() as usize,
        &[],
        "WdfObjectGetTypedContextWorker",
        |o| {
            o.contexts
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(std::ptr::null_mut(), |&(_, p)| p as *mut c_void)
        },
    )
}

/// WdfObjectAllocateContext.
pub(crate) unsafe extern "win64" fn wdf_object_allocate_context(
    _g: *mut WDF_DRIVER_GLOBALS,
    object: WDFOBJECT,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
    context: *mut *mut c_void,
) -> NTSTATUS {
    thread::require_at_most("WdfObjectAllocateContext", DISPATCH);
    let Some(a) =
        attributes(attrs, "WdfObjectAllocateContext").filter(|a| !a.ContextTypeInfo.is_null())
    else {
        return STATUS_INVALID_PARAMETER;
    };
    let key = context_key(a.ContextTypeInfo);
    let raw = object.as_raw() as usize;
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    let tag = state.pool_tag;
    let exists = match state.get(raw, &[], "WdfObjectAllocateContext") {
        Ok(o) => o.contexts.iter().any(|(k, _)| *k == key),
        Err(m) => {
            drop(state);
            violation(wdf_violation::INVALID_HANDLE, raw, m)
        }
    };
    if exists {
        return STATUS_OBJECT_NAME_EXISTS;
    }
    let block = kernel.pool.allocate(
        context_size(&a).max(1),
        tag,
        true,
        false,
        Owner::Driver,
        true,
    );
    if block.is_null() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let o = state.objects.get_mut(&raw).expect("checked above");
    o.blocks.push(block as usize);
    o.contexts.push((key, block as usize));
    o.context_callbacks
        .push((a.EvtCleanupCallback, a.EvtDestroyCallback));
    if !context.is_null() {
        // SAFETY: a non-NULL out-pointer is the driver's.
        unsafe { *context = block as *mut c_void };
    }
    STATUS_SUCCESS
}

/// WdfObjectReferenceActual.
pub(crate) unsafe extern "win64" fn wdf_object_reference_actual(
    _g: *mut WDF_DRIVER_GLOBALS,
    object: WDFOBJECT,
    _tag: *mut c_void,
    _line: i32,
    _file: *const u8,
) {
    thread::require_at_most("WdfObjectReference", DISPATCH);
    with_object(object.as_raw() as usize, &[], "WdfObjectReference", |o| {
        o.references += 1
    });
}

/// WdfObjectDereferenceActual.
pub(crate) unsafe extern "win64" fn wdf_object_dereference_actual(
    _g: *mut WDF_DRIVER_GLOBALS,
    object: WDFOBJECT,
    _tag: *mut c_void,
    _line: i32,
    _file: *const u8,
) {
    thread::require_at_most("WdfObjectDereference", DISPATCH);
    let raw = object.as_raw() as usize;
    let outcome = with_object(raw, &[], "WdfObjectDereference", |o| {
        if o.references == 0 {
            return Err(());
        }
        o.references -= 1;
        let finished = match &o.data {
            Data::Request(r) => r.place == RequestPlace::Completed,
            _ => o.deleted,
        };
        Ok(o.references == 0 && finished)
    });
    match outcome {
        Err(()) => violation(
            wdf_violation::REFERENCE_COUNT,
            raw,
            format!("WdfObjectDereference: {raw:#x} has no reference to drop"),
        ),
        Ok(true) => destroy(raw),
        Ok(false) => {}
    }
}
