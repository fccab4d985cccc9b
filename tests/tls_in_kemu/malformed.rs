//! Malformed and unauthorised requests get precise errors and change nothing.

use super::*;

#[test]
fn malformed_and_unauthorised_requests_change_nothing() {
    isolated(
        "malformed::malformed_and_unauthorised_requests_change_nothing",
        || {
            let (kernel, thumbprint) = boot();
            let h = open(&kernel);
            let call = |code: u32, input: &[u8], out: usize| {
                kernel.ioctl(h, code, input, out).unwrap().status
            };
            // LISTEN: short, wrong magic, unknown certificate, output too small.
            assert_eq!(
                call(IOCTL_WSKTLS_LISTEN, &[1, 2, 3], 64),
                STATUS_BUFFER_TOO_SMALL
            );
            let mut good = vec![0u8; ListenRequest::FIXED];
            let n = ListenRequest {
                endpoint: Endpoint::loopback_v4(0),
                thumbprint: thumbprint.0,
                versions: VersionRange::ALL,
                require_client_certificate: false,
                alpn: b"",
            }
            .encode(&mut good)
            .unwrap();
            let mut bad_magic = good[..n].to_vec();
            bad_magic[0] ^= 0xFF;
            assert_eq!(
                call(IOCTL_WSKTLS_LISTEN, &bad_magic, 64),
                STATUS_REVISION_MISMATCH
            );
            let mut unknown = vec![0u8; ListenRequest::FIXED];
            let m = ListenRequest {
                endpoint: Endpoint::loopback_v4(0),
                thumbprint: [0xAB; 20],
                versions: VersionRange::ALL,
                require_client_certificate: false,
                alpn: b"",
            }
            .encode(&mut unknown)
            .unwrap();
            assert_eq!(
                call(IOCTL_WSKTLS_LISTEN, &unknown[..m], 64),
                STATUS_NOT_FOUND
            );
            assert_eq!(
                call(IOCTL_WSKTLS_LISTEN, &good[..n], 4),
                STATUS_BUFFER_TOO_SMALL
            );
            // Unknown ids, id 0, oversized and empty requests.
            for code in [
                IOCTL_WSKTLS_ACCEPT,
                IOCTL_WSKTLS_SHUTDOWN,
                IOCTL_WSKTLS_CLOSE,
                IOCTL_WSKTLS_PEER_CERTIFICATES,
            ] {
                assert_eq!(
                    call(code, &IdRequest { id: 777 }.encode(), ConnectionInfo::SIZE),
                    STATUS_INVALID_HANDLE,
                    "{code:#x}"
                );
                assert_eq!(
                    call(code, &[], ConnectionInfo::SIZE),
                    STATUS_BUFFER_TOO_SMALL,
                    "{code:#x}"
                );
            }
            assert_eq!(
                call(
                    IOCTL_WSKTLS_RECV,
                    &RecvRequest { id: 777, max: 10 }.encode(),
                    10
                ),
                STATUS_INVALID_HANDLE
            );
            assert_eq!(
                call(
                    IOCTL_WSKTLS_RECV,
                    &RecvRequest { id: 777, max: 10 }.encode(),
                    0
                ),
                STATUS_BUFFER_TOO_SMALL
            );
            // SEND: the header is the input, the payload the (direct) output buffer.
            let header = SendRequest { id: 777 }.encode();
            assert_eq!(
                call(IOCTL_WSKTLS_SEND, &header, MAX_SEND + 1),
                STATUS_INVALID_BUFFER_SIZE,
                "a payload over MAX_SEND"
            );
            assert_eq!(
                call(IOCTL_WSKTLS_SEND, &header, 0),
                STATUS_INVALID_PARAMETER,
                "an empty payload"
            );
            assert_eq!(call(IOCTL_WSKTLS_SEND, &header, 10), STATUS_INVALID_HANDLE);
            assert_eq!(
                call(IOCTL_WSKTLS_SEND, &[header.as_slice(), &[0]].concat(), 10),
                STATUS_INVALID_BUFFER_SIZE,
                "a longer header"
            );
            assert_eq!(
                call(IOCTL_WSKTLS_STATS, &[0], Stats::SIZE),
                STATUS_INVALID_BUFFER_SIZE
            );
            assert_eq!(call(IOCTL_WSKTLS_STATS, &[], 8), STATUS_BUFFER_TOO_SMALL);
            // CONNECT: an unspecified address needs a host name to resolve.
            let mut unresolved = ConnectRequest {
                endpoint: Endpoint::loopback_v4(443),
                host: b"",
                sni: b"",
                alpn: b"",
                versions: VersionRange::ALL,
                validation: Validation::SystemRoots,
                client_certificate: None,
                keep_peer_certificates: false,
                full_handshake: false,
            };
            unresolved.endpoint.ip = [0; 16];
            let mut buf = vec![0u8; ConnectRequest::FIXED];
            let n = unresolved.encode(&mut buf).unwrap();
            assert_eq!(
                call(IOCTL_WSKTLS_CONNECT, &buf[..n], ConnectionInfo::SIZE),
                STATUS_INVALID_PARAMETER
            );
            // Nothing was created by any of it.
            let s = stats(&kernel, h);
            assert_eq!(
                (s.connections_open, s.listeners_open, s.pending_operations),
                (0, 0, 0)
            );
            // A caller that is not an administrator cannot open the device at all.
            assert!(kernel.open(DEVICE_PATH, Caller::User).is_err());
            kernel.close(h).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}
