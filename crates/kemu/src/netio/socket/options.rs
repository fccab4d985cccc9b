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
                let v = value.ok_or(STATUS_INVALID_PARAMETER)?;
                os.ok_or(STATUS_INVALID_DEVICE_STATE)?
                    .set_keepalive(v != 0)
                    .map_err(|e| status_of(&e))?;
                Ok(None)
            }
            (ksys::wsk::WSK_GET_OPTION, SOL_SOCKET, SO_KEEPALIVE) => Ok(Some(u32::from(
                os.ok_or(STATUS_INVALID_DEVICE_STATE)?
                    .keepalive()
                    .map_err(|e| status_of(&e))?,
            ))),
            (ksys::wsk::WSK_SET_OPTION, IPPROTO_TCP, TCP_NODELAY) => {
                let v = value.ok_or(STATUS_INVALID_PARAMETER)?;
                os.ok_or(STATUS_INVALID_DEVICE_STATE)?
                    .set_nodelay(v != 0)
                    .map_err(|e| status_of(&e))?;
                Ok(None)
            }
            (ksys::wsk::WSK_GET_OPTION, IPPROTO_TCP, TCP_NODELAY) => Ok(Some(u32::from(
                os.ok_or(STATUS_INVALID_DEVICE_STATE)?
                    .nodelay()
                    .map_err(|e| status_of(&e))?,
            ))),
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
