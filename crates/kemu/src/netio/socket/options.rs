//! WskControlSocket: the socket options and IOCTLs kemu models.

use super::*;

pub(super) fn read_u32(buf: *mut c_void, len: usize) -> Option<u32> {
    if buf.is_null() || len < 4 {
        return None;
    }
    // SAFETY: the driver's input buffer holds at least 4 bytes.
    Some(unsafe { std::ptr::read_unaligned(buf as *const u32) })
}

/// WskControlSocket: SO_KEEPALIVE, TCP_NODELAY and IPV6_V6ONLY (set and get); event callbacks
/// (SO_WSK_EVENT_CALLBACK) and ioctls are STATUS_NOT_SUPPORTED.
pub(super) unsafe extern "win64" fn wsk_control_socket(
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
) -> NTSTATUS {
    thread::require_at_most("WskControlSocket", DISPATCH);
    with_socket("WskControlSocket", socket, |_| ());
    if !irp.is_null() {
        if let Err(s) = take_irp(irp) {
            return s;
        }
    }
    let value = read_u32(in_buf, in_len);
    let result: Result<Option<u32>, NTSTATUS> = with_socket("WskControlSocket", socket, |sock| {
        let os: Option<socket2::SockRef<'_>> = match &sock.io {
            Io::Fresh(o) | Io::Bound(o) => Some(socket2::SockRef::from(o)),
            Io::Listener(l) => Some(socket2::SockRef::from(l)),
            Io::Connecting(st) | Io::Stream(st) => Some(socket2::SockRef::from(st)),
            Io::Dead => None,
        };
        match (request_type, level, code) {
            (_, SOL_SOCKET, SO_WSK_EVENT_CALLBACK) => Err(STATUS_NOT_SUPPORTED),
            (ksys::wsk::WSK_SET_OPTION, SOL_SOCKET, SO_KEEPALIVE) => {
                set_flag(os, value, |o, on| o.set_keepalive(on))
            }
            (ksys::wsk::WSK_GET_OPTION, SOL_SOCKET, SO_KEEPALIVE) => {
                get_flag(os, |o| o.keepalive())
            }
            (ksys::wsk::WSK_SET_OPTION, IPPROTO_TCP, TCP_NODELAY) => {
                set_flag(os, value, |o, on| o.set_nodelay(on))
            }
            (ksys::wsk::WSK_GET_OPTION, IPPROTO_TCP, TCP_NODELAY) => get_flag(os, |o| o.nodelay()),
            (ksys::wsk::WSK_SET_OPTION, IPPROTO_IPV6, IPV6_V6ONLY) => {
                let v = value.ok_or(STATUS_INVALID_PARAMETER)?;
                if u32::from(sock.family) != AF_INET6 || !matches!(sock.io, Io::Fresh(_)) {
                    return Err(STATUS_INVALID_DEVICE_STATE);
                }
                sock.v6only = Some(v != 0);
                Ok(None)
            }
            (ksys::wsk::WSK_GET_OPTION, IPPROTO_IPV6, IPV6_V6ONLY) => {
                Ok(Some(u32::from(sock.v6only.unwrap_or(true))))
            }
            _ => Err(STATUS_NOT_SUPPORTED),
        }
    });
    let status = match result {
        Ok(Some(v)) => {
            if out_buf.is_null() || out_len < 4 {
                STATUS_BUFFER_TOO_SMALL
            } else {
                // SAFETY: the driver's output buffer holds at least 4 bytes.
                unsafe {
                    std::ptr::write_unaligned(out_buf as *mut u32, v);
                    if !out_returned.is_null() {
                        *out_returned = 4;
                    }
                }
                STATUS_SUCCESS
            }
        }
        Ok(None) => STATUS_SUCCESS,
        Err(status) => status,
    };
    if irp.is_null() {
        status
    } else {
        respond(irp, status, 0)
    }
}

/// Sets a boolean host socket option from the driver's value (no value: a short input buffer).
fn set_flag(
    os: Option<socket2::SockRef<'_>>,
    value: Option<u32>,
    set: impl FnOnce(&socket2::SockRef<'_>, bool) -> std::io::Result<()>,
) -> Result<Option<u32>, NTSTATUS> {
    let on = value.ok_or(STATUS_INVALID_PARAMETER)? != 0;
    set(&os.ok_or(STATUS_INVALID_DEVICE_STATE)?, on).map_err(|e| status_of(&e))?;
    Ok(None)
}

/// Reads a boolean host socket option as the 0/1 ULONG Windows returns.
fn get_flag(
    os: Option<socket2::SockRef<'_>>,
    get: impl FnOnce(&socket2::SockRef<'_>) -> std::io::Result<bool>,
) -> Result<Option<u32>, NTSTATUS> {
    let on = get(&os.ok_or(STATUS_INVALID_DEVICE_STATE)?).map_err(|e| status_of(&e))?;
    Ok(Some(u32::from(on)))
}
