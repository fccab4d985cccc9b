//! The provider's dispatch tables (listen and connection sockets), the dead tables a closed
//! socket's memory keeps so a late call is caught, and the quarantine of closed sockets.

use super::*;

/// Bytes of the WSK_SOCKET kemu hands out (the Dispatch pointer; the rest is kemu's).
pub(super) const SOCKET_BLOCK: usize = 16;
/// Listen backlog.
pub(super) const BACKLOG: i32 = 1024;

/// A dispatch table holding pointer-typed unused members, shareable as a static.
pub(crate) struct Table<T>(pub T);
// SAFETY: the tables are immutable and only hold function pointers and NULLs.
unsafe impl<T> Sync for Table<T> {}

pub(crate) static PROVIDER_DISPATCH: WSK_PROVIDER_DISPATCH = WSK_PROVIDER_DISPATCH {
    Version: crate::netio::WSK_VERSION,
    Reserved: 0,
    WskSocket: Some(wsk_socket),
    WskSocketConnect: Some(wsk_socket_connect),
    WskControlClient: Some(crate::netio::wsk_control_client),
    WskGetAddressInfo: Some(crate::netio::wsk_get_address_info),
    WskFreeAddressInfo: Some(crate::netio::wsk_free_address_info),
    WskGetNameInfo: Some(wsk_get_name_info),
};

pub(super) static LISTEN_DISPATCH: Table<WSK_PROVIDER_LISTEN_DISPATCH> =
    Table(WSK_PROVIDER_LISTEN_DISPATCH {
        Basic: WSK_PROVIDER_BASIC_DISPATCH {
            WskControlSocket: Some(wsk_control_socket),
            WskCloseSocket: Some(wsk_close_socket),
        },
        WskBind: Some(wsk_bind),
        WskAccept: Some(wsk_accept),
        WskInspectComplete: Some(wsk_inspect_complete),
        WskGetLocalAddress: Some(wsk_get_local_address),
    });

pub(super) static CONNECTION_DISPATCH: Table<WSK_PROVIDER_CONNECTION_DISPATCH> =
    Table(WSK_PROVIDER_CONNECTION_DISPATCH {
        Basic: WSK_PROVIDER_BASIC_DISPATCH {
            WskControlSocket: Some(wsk_control_socket),
            WskCloseSocket: Some(wsk_close_socket),
        },
        WskBind: Some(wsk_bind),
        WskConnect: Some(wsk_connect),
        WskGetLocalAddress: Some(wsk_get_local_address),
        WskGetRemoteAddress: Some(wsk_get_remote_address),
        WskSend: Some(wsk_send),
        WskReceive: Some(wsk_receive),
        WskDisconnect: Some(wsk_disconnect),
        WskRelease: Some(wsk_release),
        WskConnectEx: std::ptr::null(),
        WskSendEx: std::ptr::null(),
        WskReceiveEx: std::ptr::null(),
    });

pub(super) fn dead(routine: &str, socket: *mut WSK_SOCKET) -> ! {
    wsk_violation(
        format!(
            "{routine} on socket {:#x} after WskCloseSocket",
            socket as usize
        ),
        socket as usize,
    )
}

pub(super) unsafe extern "win64" fn dead_control(
    s: *mut WSK_SOCKET,
    _t: i32,
    _c: u32,
    _l: u32,
    _il: usize,
    _ib: *mut c_void,
    _ol: usize,
    _ob: *mut c_void,
    _or: *mut usize,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskControlSocket", s)
}
pub(super) unsafe extern "win64" fn dead_close(s: *mut WSK_SOCKET, _irp: *mut IRP) -> NTSTATUS {
    dead("WskCloseSocket", s)
}
pub(super) unsafe extern "win64" fn dead_bind(
    s: *mut WSK_SOCKET,
    _a: *mut SOCKADDR,
    _f: u32,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskBind/WskConnect", s)
}
pub(super) unsafe extern "win64" fn dead_accept(
    s: *mut WSK_SOCKET,
    _f: u32,
    _c: *mut c_void,
    _d: *const WSK_CLIENT_CONNECTION_DISPATCH,
    _l: *mut SOCKADDR,
    _r: *mut SOCKADDR,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskAccept", s)
}
pub(super) unsafe extern "win64" fn dead_inspect(
    s: *mut WSK_SOCKET,
    _i: *mut c_void,
    _a: i32,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskInspectComplete", s)
}
pub(super) unsafe extern "win64" fn dead_address(
    s: *mut WSK_SOCKET,
    _a: *mut SOCKADDR,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskGetLocalAddress/WskGetRemoteAddress", s)
}
pub(super) unsafe extern "win64" fn dead_data(
    s: *mut WSK_SOCKET,
    _b: *mut WSK_BUF,
    _f: u32,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskSend/WskReceive/WskDisconnect", s)
}
pub(super) unsafe extern "win64" fn dead_release(
    s: *mut WSK_SOCKET,
    _l: *mut WSK_DATA_INDICATION,
) -> NTSTATUS {
    dead("WskRelease", s)
}

/// What a closed socket's Dispatch points to while kemu keeps its memory in quarantine: every
/// member stops the kernel naming the call made after WskCloseSocket.
pub(super) static DEAD_LISTEN_DISPATCH: Table<WSK_PROVIDER_LISTEN_DISPATCH> =
    Table(WSK_PROVIDER_LISTEN_DISPATCH {
        Basic: WSK_PROVIDER_BASIC_DISPATCH {
            WskControlSocket: Some(dead_control),
            WskCloseSocket: Some(dead_close),
        },
        WskBind: Some(dead_bind),
        WskAccept: Some(dead_accept),
        WskInspectComplete: Some(dead_inspect),
        WskGetLocalAddress: Some(dead_address),
    });

pub(super) static DEAD_CONNECTION_DISPATCH: Table<WSK_PROVIDER_CONNECTION_DISPATCH> =
    Table(WSK_PROVIDER_CONNECTION_DISPATCH {
        Basic: WSK_PROVIDER_BASIC_DISPATCH {
            WskControlSocket: Some(dead_control),
            WskCloseSocket: Some(dead_close),
        },
        WskBind: Some(dead_bind),
        WskConnect: Some(dead_bind),
        WskGetLocalAddress: Some(dead_address),
        WskGetRemoteAddress: Some(dead_address),
        WskSend: Some(dead_data),
        WskReceive: Some(dead_data),
        WskDisconnect: Some(dead_data),
        WskRelease: Some(dead_release),
        WskConnectEx: std::ptr::null(),
        WskSendEx: std::ptr::null(),
        WskReceiveEx: std::ptr::null(),
    });

/// Closed sockets kept allocated (with a dead dispatch) so late calls are caught, not crashes.
pub(super) const QUARANTINE: usize = 4096;

/// Retires a closed socket's memory: dead dispatch now, freed after QUARANTINE more closes.
pub(super) fn retire(state: &mut crate::netio::NetState, socket: usize, category: Category) {
    let dead: *const c_void = match category {
        Category::Listen => &DEAD_LISTEN_DISPATCH.0 as *const _ as *const c_void,
        Category::Connection => &DEAD_CONNECTION_DISPATCH.0 as *const _ as *const c_void,
    };
    // SAFETY: kemu's own socket block, still allocated.
    unsafe { (*(socket as *mut WSK_SOCKET)).Dispatch = dead };
    state.quarantine.push_back(socket);
    while state.quarantine.len() > QUARANTINE {
        if let Some(old) = state.quarantine.pop_front() {
            crate::io::free(old as *mut u8, SOCKET_BLOCK);
        }
    }
}

/// Frees every quarantined socket block (kernel shutdown).
pub(crate) fn free_quarantine(state: &mut crate::netio::NetState) {
    for s in state.quarantine.drain(..) {
        crate::io::free(s as *mut u8, SOCKET_BLOCK);
    }
}
