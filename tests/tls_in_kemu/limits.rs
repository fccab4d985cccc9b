//! The registry's limits, and credential acquisition that never blocks a caller.

use super::*;

#[test]
fn connection_limits_come_from_the_registry_are_reported_and_enforced() {
    isolated(
        "limits::connection_limits_come_from_the_registry_are_reported_and_enforced",
        || {
            let (kernel, thumbprint) =
                boot_with_parameters(&[("MaxConnections", 3), ("maxconnectionsperhandle", 2)]);
            let a = open(&kernel);
            let b = open(&kernel);
            let s = stats(&kernel, a);
            assert_eq!(
                (s.max_connections, s.max_connections_per_handle),
                (3, 2),
                "{s:?}"
            );
            let listen_status = |h| {
                support::client(&kernel, h)
                    .listen(&ListenRequest {
                        endpoint: Endpoint::loopback_v4(0),
                        thumbprint: thumbprint.0,
                        versions: VersionRange::ALL,
                        require_client_certificate: false,
                        alpn: b"",
                    })
                    .map(|listening| listening.id)
                    .map_err(|e| status_of::<()>(Err(e)))
            };
            let first = listen_status(a).unwrap();
            listen_status(a).unwrap();
            assert_eq!(listen_status(a), Err(STATUS_QUOTA_EXCEEDED), "per handle");
            listen_status(b).unwrap();
            assert_eq!(listen_status(b), Err(STATUS_QUOTA_EXCEEDED), "in all");
            // A CONNECT at the limit fails the same way, before any connection is made.
            let connect = connect_async(&kernel, b, 1, b"localhost", b"").wait(WAIT);
            assert_eq!(request_status(connect), STATUS_QUOTA_EXCEEDED);
            assert_eq!(close_object(&kernel, a, first), STATUS_SUCCESS);
            listen_status(b).unwrap();
            kernel.close(a).unwrap();
            kernel.close(b).unwrap();
            kernel.shutdown().unwrap();

            // Values that make no sense leave the defaults.
            let (kernel, _) = boot_with_parameters(&[("MaxConnections", 0)]);
            let h = open(&kernel);
            let s = stats(&kernel, h);
            assert_eq!(
                (s.max_connections, s.max_connections_per_handle),
                (16_384, 16_384)
            );
            kernel.close(h).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

fn listen_request(thumbprint: [u8; 20]) -> Vec<u8> {
    let request = ListenRequest {
        endpoint: Endpoint::loopback_v4(0),
        thumbprint,
        versions: VersionRange::ALL,
        require_client_certificate: false,
        alpn: b"",
    };
    let mut buf = vec![0u8; ListenRequest::FIXED];
    let n = request.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn credential_acquisition_never_blocks_a_caller_and_can_fail_or_be_cancelled_while_pending() {
    isolated(
        "limits::credential_acquisition_never_blocks_a_caller_and_can_fail_or_be_cancelled_while_pending",
        || {
            // The LSA takes 3 s over every acquisition.
            let (kernel, thumbprint) = boot_with(&[], |config| {
                config.faults.credential_delay = Duration::from_secs(3);
            });
            let h = open(&kernel);
            // LISTEN returns to its caller pending while the credential is acquired (a
            // dispatch routine that waited would have completed it before returning)...
            let pending_listen = kernel
                .ioctl_async(
                    h,
                    IOCTL_WSKTLS_LISTEN,
                    &listen_request(thumbprint.0),
                    ListenResponse::SIZE,
                )
                .unwrap();
            assert!(!pending_listen.is_complete(), "LISTEN waited for the LSA");
            // ... as does a CONNECT that needs a client credential. (Both are raw requests:
            // whether a cancel routine ran is the kernel's to tell.)
            let connect = kernel
                .ioctl_async(
                    h,
                    IOCTL_WSKTLS_CONNECT,
                    &connect_request(9, b"localhost", b"", Validation::SystemRoots),
                    ConnectionInfo::SIZE,
                )
                .unwrap();
            assert!(!connect.is_complete(), "CONNECT waited for the LSA");
            let s = stats(&kernel, h);
            assert_eq!(s.pending_operations, 2, "{s:?}");
            // Both can be cancelled while the LSA still works: they complete at once and leave
            // nothing behind.
            assert!(pending_listen.cancel().unwrap());
            assert!(connect.cancel().unwrap());
            for io in [pending_listen, connect] {
                let r = io
                    .wait_timeout(Duration::from_secs(1))
                    .unwrap()
                    .expect("a cancelled request completes at once");
                assert_eq!(r.status, STATUS_CANCELLED);
            }
            let s = stats(&kernel, h);
            assert_eq!(
                (s.connections_open, s.listeners_open, s.pending_operations),
                (0, 0, 0),
                "{s:?}"
            );
            // A certificate that is not in the store fails through the same path, precisely,
            // and leaves no listener behind.
            let unknown = support::client(&kernel, h).listen(&ListenRequest {
                endpoint: Endpoint::loopback_v4(0),
                thumbprint: [0x5A; 20],
                versions: VersionRange::ALL,
                require_client_certificate: false,
                alpn: b"",
            });
            assert_eq!(status_of(unknown), STATUS_NOT_FOUND);
            // And a LISTEN left to finish listens.
            let listener = listen(&kernel, h, thumbprint, b"");
            assert_ne!(listener.port, 0);
            let s = stats(&kernel, h);
            assert_eq!((s.listeners_open, s.pending_operations), (1, 0), "{s:?}");
            kernel.close(h).unwrap();
            // Unload waits for the abandoned acquisitions to finish and frees their credentials.
            kernel.shutdown().unwrap();
        },
    );
}
