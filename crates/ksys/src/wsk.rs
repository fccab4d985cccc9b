//! Winsock Kernel (NETIO.SYS): registration NPIs, the provider dispatch tables in their real
//! member order, WSK_BUF, Windows socket addresses and the WSK_* constants.
//!
//! Addresses carry no length anywhere in WSK: the provider infers it from the family, and
//! AF_INET6 is 23 on Windows.

#![allow(non_snake_case, non_camel_case_types)]

use core::ffi::c_void;

use crate::io::{IRP, MDL};
use crate::ntdef::{GUID, KSPIN_LOCK, NTSTATUS, UNICODE_STRING};
use crate::sspi::consts;

/// Client dispatch handed to `WskRegister` (version + optional client event callback).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_CLIENT_DISPATCH {
    pub Version: u16,
    pub Reserved: u16,
    pub WskClientEvent: *const c_void,
}

/// The client's network programming interface (must stay pinned until WskDeregister returns).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_CLIENT_NPI {
    pub ClientContext: *mut c_void,
    pub Dispatch: *const WSK_CLIENT_DISPATCH,
}

/// Opaque registration state owned by NETIO (pinned until WskDeregister returns).
#[repr(C)]
#[derive(Debug)]
pub struct WSK_REGISTRATION {
    pub ReservedRegistrationState: u64,
    pub ReservedRegistrationContext: *mut c_void,
    pub ReservedRegistrationLock: KSPIN_LOCK,
}

/// The provider's NPI returned by `WskCaptureProviderNPI`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_PROVIDER_NPI {
    /// `PWSK_CLIENT`: first argument of every provider-dispatch call.
    pub Client: *mut c_void,
    pub Dispatch: *const WSK_PROVIDER_DISPATCH,
}

// SAFETY: a captured NPI is a client handle and the provider's static dispatch table, both
// usable from any thread until WskReleaseProviderNPI.
unsafe impl Send for WSK_PROVIDER_NPI {}
// SAFETY: as above; calls through it do not mutate the NPI itself.
unsafe impl Sync for WSK_PROVIDER_NPI {}

/// Versions the provider supports.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct WSK_PROVIDER_CHARACTERISTICS {
    pub HighestVersion: u16,
    pub LowestVersion: u16,
}

/// A socket; `Dispatch` points at the table of the socket's category.
#[repr(C)]
#[derive(Debug)]
pub struct WSK_SOCKET {
    pub Dispatch: *const c_void,
}

/// A byte range over an MDL chain: `Offset` into the first MDL, `Length` bytes in all.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_BUF {
    pub Mdl: *mut MDL,
    pub Offset: u32,
    pub Length: usize,
}

/// Data indicated by a receive event (event mode only).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_DATA_INDICATION {
    pub Next: *mut WSK_DATA_INDICATION,
    pub Buffer: WSK_BUF,
}

/// Argument of SO_WSK_EVENT_CALLBACK (event mode only).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_EVENT_CALLBACK_CONTROL {
    pub NpiId: *const GUID,
    pub EventMask: u32,
}

/// Generic socket address header.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SOCKADDR {
    pub sa_family: u16,
    pub sa_data: [u8; 14],
}

/// IPv4 socket address (port and address in network byte order).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SOCKADDR_IN {
    pub sin_family: u16,
    pub sin_port: u16,
    pub sin_addr: [u8; 4],
    pub sin_zero: [u8; 8],
}

/// IPv6 socket address (family [`AF_INET6`] = 23).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SOCKADDR_IN6 {
    pub sin6_family: u16,
    pub sin6_port: u16,
    pub sin6_flowinfo: u32,
    pub sin6_addr: [u8; 16],
    pub sin6_scope_id: u32,
}

/// Storage big enough and aligned for any socket address.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub struct SOCKADDR_STORAGE {
    pub ss_family: u16,
    pub data: [u8; 126],
}

/// Name-resolution result node (`WskGetAddressInfo`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ADDRINFOEXW {
    pub ai_flags: i32,
    pub ai_family: i32,
    pub ai_socktype: i32,
    pub ai_protocol: i32,
    pub ai_addrlen: usize,
    pub ai_canonname: *mut u16,
    pub ai_addr: *mut SOCKADDR,
    pub ai_blob: *mut c_void,
    pub ai_bloblen: usize,
    pub ai_provider: *mut GUID,
    pub ai_next: *mut ADDRINFOEXW,
}

/// `WskSocket`.
pub type PFN_WSK_SOCKET = Option<
    unsafe extern "win64" fn(
        client: *mut c_void,
        family: u16,
        socket_type: u16,
        protocol: u32,
        flags: u32,
        socket_context: *mut c_void,
        dispatch: *const c_void,
        owning_process: *mut c_void,
        owning_thread: *mut c_void,
        security_descriptor: *mut c_void,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskSocketConnect`.
pub type PFN_WSK_SOCKET_CONNECT = Option<
    unsafe extern "win64" fn(
        client: *mut c_void,
        socket_type: u16,
        protocol: u32,
        local: *mut SOCKADDR,
        remote: *mut SOCKADDR,
        flags: u32,
        socket_context: *mut c_void,
        dispatch: *const WSK_CLIENT_CONNECTION_DISPATCH,
        owning_process: *mut c_void,
        owning_thread: *mut c_void,
        security_descriptor: *mut c_void,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskControlClient`.
pub type PFN_WSK_CONTROL_CLIENT = Option<
    unsafe extern "win64" fn(
        client: *mut c_void,
        code: u32,
        in_len: usize,
        in_buf: *mut c_void,
        out_len: usize,
        out_buf: *mut c_void,
        out_returned: *mut usize,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskGetAddressInfo`.
pub type PFN_WSK_GET_ADDRESS_INFO = Option<
    unsafe extern "win64" fn(
        client: *mut c_void,
        node: *const UNICODE_STRING,
        service: *const UNICODE_STRING,
        namespace: u32,
        provider: *mut GUID,
        hints: *const ADDRINFOEXW,
        result: *mut *mut ADDRINFOEXW,
        owning_process: *mut c_void,
        owning_thread: *mut c_void,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskFreeAddressInfo`.
pub type PFN_WSK_FREE_ADDRESS_INFO =
    Option<unsafe extern "win64" fn(client: *mut c_void, info: *mut ADDRINFOEXW)>;
/// `WskGetNameInfo` (unused; typed for completeness of the table).
pub type PFN_WSK_GET_NAME_INFO = Option<
    unsafe extern "win64" fn(
        client: *mut c_void,
        addr: *mut SOCKADDR,
        addr_len: u32,
        node: *mut UNICODE_STRING,
        service: *mut UNICODE_STRING,
        flags: u32,
        owning_process: *mut c_void,
        owning_thread: *mut c_void,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskControlSocket`.
pub type PFN_WSK_CONTROL_SOCKET = Option<
    unsafe extern "win64" fn(
        socket: *mut WSK_SOCKET,
        request_type: i32,
        code: u32,
        level: u32,
        in_len: usize,
        in_buf: *mut c_void,
        out_len: usize,
        out_buf: *mut c_void,
        out_returned: *mut usize,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskCloseSocket`.
pub type PFN_WSK_CLOSE_SOCKET =
    Option<unsafe extern "win64" fn(socket: *mut WSK_SOCKET, irp: *mut IRP) -> NTSTATUS>;
/// `WskBind`.
pub type PFN_WSK_BIND = Option<
    unsafe extern "win64" fn(
        socket: *mut WSK_SOCKET,
        local: *mut SOCKADDR,
        flags: u32,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskAccept`.
pub type PFN_WSK_ACCEPT = Option<
    unsafe extern "win64" fn(
        listen_socket: *mut WSK_SOCKET,
        flags: u32,
        accept_context: *mut c_void,
        accept_dispatch: *const WSK_CLIENT_CONNECTION_DISPATCH,
        local: *mut SOCKADDR,
        remote: *mut SOCKADDR,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskInspectComplete` (conditional accept; unused).
pub type PFN_WSK_INSPECT_COMPLETE = Option<
    unsafe extern "win64" fn(
        socket: *mut WSK_SOCKET,
        id: *mut c_void,
        action: i32,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskGetLocalAddress` / `WskGetRemoteAddress`.
pub type PFN_WSK_GET_ADDRESS = Option<
    unsafe extern "win64" fn(
        socket: *mut WSK_SOCKET,
        address: *mut SOCKADDR,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskConnect`.
pub type PFN_WSK_CONNECT = Option<
    unsafe extern "win64" fn(
        socket: *mut WSK_SOCKET,
        remote: *mut SOCKADDR,
        flags: u32,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskSend` / `WskReceive` / `WskDisconnect` (buffer may be NULL for an abortive disconnect).
pub type PFN_WSK_SEND_RECEIVE = Option<
    unsafe extern "win64" fn(
        socket: *mut WSK_SOCKET,
        buf: *mut WSK_BUF,
        flags: u32,
        irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `WskRelease` (event mode only).
pub type PFN_WSK_RELEASE = Option<
    unsafe extern "win64" fn(socket: *mut WSK_SOCKET, list: *mut WSK_DATA_INDICATION) -> NTSTATUS,
>;
/// `WskListen` (stream sockets only).
pub type PFN_WSK_LISTEN =
    Option<unsafe extern "win64" fn(socket: *mut WSK_SOCKET, irp: *mut IRP) -> NTSTATUS>;
/// Win10 `*Ex` members (unused by wsktls; typed as raw pointers).
pub type PFN_WSK_UNUSED = *const c_void;

/// Provider-level dispatch (socket creation, client control, name resolution).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_PROVIDER_DISPATCH {
    pub Version: u16,
    pub Reserved: u16,
    pub WskSocket: PFN_WSK_SOCKET,
    pub WskSocketConnect: PFN_WSK_SOCKET_CONNECT,
    pub WskControlClient: PFN_WSK_CONTROL_CLIENT,
    pub WskGetAddressInfo: PFN_WSK_GET_ADDRESS_INFO,
    pub WskFreeAddressInfo: PFN_WSK_FREE_ADDRESS_INFO,
    pub WskGetNameInfo: PFN_WSK_GET_NAME_INFO,
}

/// Members every socket category starts with.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_PROVIDER_BASIC_DISPATCH {
    pub WskControlSocket: PFN_WSK_CONTROL_SOCKET,
    pub WskCloseSocket: PFN_WSK_CLOSE_SOCKET,
}

/// Listen-socket dispatch.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_PROVIDER_LISTEN_DISPATCH {
    pub Basic: WSK_PROVIDER_BASIC_DISPATCH,
    pub WskBind: PFN_WSK_BIND,
    pub WskAccept: PFN_WSK_ACCEPT,
    pub WskInspectComplete: PFN_WSK_INSPECT_COMPLETE,
    pub WskGetLocalAddress: PFN_WSK_GET_ADDRESS,
}

/// Connection-socket dispatch (with the Windows 10 `*Ex` members at the end).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_PROVIDER_CONNECTION_DISPATCH {
    pub Basic: WSK_PROVIDER_BASIC_DISPATCH,
    pub WskBind: PFN_WSK_BIND,
    pub WskConnect: PFN_WSK_CONNECT,
    pub WskGetLocalAddress: PFN_WSK_GET_ADDRESS,
    pub WskGetRemoteAddress: PFN_WSK_GET_ADDRESS,
    pub WskSend: PFN_WSK_SEND_RECEIVE,
    pub WskReceive: PFN_WSK_SEND_RECEIVE,
    pub WskDisconnect: PFN_WSK_SEND_RECEIVE,
    pub WskRelease: PFN_WSK_RELEASE,
    pub WskConnectEx: PFN_WSK_UNUSED,
    pub WskSendEx: PFN_WSK_UNUSED,
    pub WskReceiveEx: PFN_WSK_UNUSED,
}

/// Stream-socket dispatch (Windows 10 1703+; wsktls uses listen/connection sockets instead).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_PROVIDER_STREAM_DISPATCH {
    pub Basic: WSK_PROVIDER_BASIC_DISPATCH,
    pub WskBind: PFN_WSK_BIND,
    pub WskAccept: PFN_WSK_ACCEPT,
    pub WskConnect: PFN_WSK_CONNECT,
    pub WskListen: PFN_WSK_LISTEN,
    pub WskSend: PFN_WSK_SEND_RECEIVE,
    pub WskReceive: PFN_WSK_SEND_RECEIVE,
    pub WskDisconnect: PFN_WSK_SEND_RECEIVE,
    pub WskRelease: PFN_WSK_RELEASE,
    pub WskGetLocalAddress: PFN_WSK_GET_ADDRESS,
    pub WskGetRemoteAddress: PFN_WSK_GET_ADDRESS,
    pub WskConnectEx: PFN_WSK_UNUSED,
    pub WskSendEx: PFN_WSK_UNUSED,
    pub WskReceiveEx: PFN_WSK_UNUSED,
}

/// Client callbacks for connection sockets (event mode only; wsktls passes NULL).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_CLIENT_CONNECTION_DISPATCH {
    pub WskReceiveEvent: *const c_void,
    pub WskDisconnectEvent: *const c_void,
    pub WskSendBacklogEvent: *const c_void,
}

/// Client callbacks for listen sockets (event mode only).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSK_CLIENT_LISTEN_DISPATCH {
    pub WskAcceptEvent: *const c_void,
    pub WskInspectEvent: *const c_void,
    pub WskAbortEvent: *const c_void,
}

/// `MAKE_WSK_VERSION(major, minor)`.
pub const fn make_wsk_version(major: u16, minor: u16) -> u16 {
    (major << 8) | minor
}

/// The WSK interface identifier {2227E803-8D8B-11D4-ABAD-009027719E09}. NETIO.SYS does not export
/// it; only event-callback control needs it (medium confidence, see the WSK reference sheet).
pub const NPI_WSK_INTERFACE_ID: GUID = GUID {
    Data1: 0x2227_E803,
    Data2: 0x8D8B,
    Data3: 0x11D4,
    Data4: [0xAB, 0xAD, 0x00, 0x90, 0x27, 0x71, 0x9E, 0x09],
};

consts! { u32; WSK_NAMES;
    WSK_FLAG_BASIC_SOCKET = 0x0;
    WSK_FLAG_LISTEN_SOCKET = 0x1;
    WSK_FLAG_CONNECTION_SOCKET = 0x2;
    WSK_FLAG_DATAGRAM_SOCKET = 0x4;
    WSK_FLAG_STREAM_SOCKET = 0x8;
    WSK_FLAG_ABORTIVE = 0x1;
    WSK_FLAG_NODELAY = 0x2;
    WSK_FLAG_WAITALL = 0x2;
    WSK_FLAG_DRAIN = 0x4;
    WSK_FLAG_RELEASE_ASAP = 0x2;
    WSK_FLAG_ENTIRE_MESSAGE = 0x4;
    WSK_FLAG_AT_DISPATCH_LEVEL = 0x8;
    WSK_EVENT_SEND_BACKLOG = 0x10;
    WSK_EVENT_RECEIVE = 0x40;
    WSK_EVENT_DISCONNECT = 0x80;
    WSK_EVENT_RECEIVE_FROM = 0x100;
    WSK_EVENT_ACCEPT = 0x200;
    WSK_EVENT_DISABLE = 0x8000_0000;
    WSK_SO_BASE = 0x4000;
    SO_WSK_SECURITY = 0x4001;
    SO_WSK_EVENT_CALLBACK = 0x4002;
    SOL_SOCKET = 0xFFFF;
    WSK_TRANSPORT_LIST_QUERY = 2;
    WSK_TRANSPORT_LIST_CHANGE = 3;
    WSK_CACHE_SD = 4;
    WSK_RELEASE_SD = 5;
    WSK_TDI_DEVICENAME_MAPPING = 6;
    WSK_SET_STATIC_EVENT_CALLBACKS = 7;
    WSK_TDI_BEHAVIOR = 8;
    WSK_NO_WAIT = 0;
    WSK_INFINITE_WAIT = 0xFFFF_FFFF;
    AF_INET = 2;
    AF_INET6 = 23;
    SOCK_STREAM = 1;
    IPPROTO_TCP = 6;
    IPPROTO_IPV6 = 41;
    IPV6_V6ONLY = 27;
    TCP_NODELAY = 1;
    SO_KEEPALIVE = 8;
}

/// `WSK_CONTROL_SOCKET_TYPE`.
pub const WSK_SET_OPTION: i32 = 0;
/// Read an option.
pub const WSK_GET_OPTION: i32 = 1;
/// Socket IOCTL.
pub const WSK_IOCTL: i32 = 2;
