//! The driver's TLS IOCTLs, linked natively, in kemu: LISTEN/ACCEPT/CONNECT/SEND/RECV/SHUTDOWN/
//! CLOSE/STATS between handles, ownership of ids, cancellation of every kind of pending request,
//! handle close and unload with live connections — all ending with zero leaks.
//!
//! `WSKTLS_IMAGE=path/to/wsktls.sys` runs the same suite against the shipped image loaded by
//! kemu's PE loader (`cargo xtask test` does so for the debug and release images).

use std::time::Duration;

use kemu::testing::isolated;
use kemu::{Caller, Handle, Kernel, Thumbprint};
use ksys::ntdef::*;
use proto::session::*;
use wsktls_client::driver::{CallError, PendingHandshake, PendingTransfer};

#[path = "../support/mod.rs"]
mod support;
use support::*;

mod connect;
mod limits;
mod malformed;
mod ordering;
mod teardown;

#[test]
fn driver_server_and_client_echo_through_ioctls() {
    isolated("driver_server_and_client_echo_through_ioctls", || {
        let (kernel, thumbprint) = boot();
        let server_handle = open(&kernel);
        let client_handle = open(&kernel);
        let listener = listen(&kernel, server_handle, thumbprint, b"\x02h2");
        assert_ne!(listener.port, 0);
        let accept = accept_async(&kernel, server_handle, listener.id);
        let connect = connect_async(
            &kernel,
            client_handle,
            listener.port,
            b"localhost",
            b"\x02h2",
        );
        let client = info(connect);
        let server = info(accept);
        assert_eq!((client.status, client.sspi_status), (STATUS_SUCCESS.0, 0));
        assert_eq!(client.version, Some(TlsVersion::Tls13));
        assert_eq!(client.alpn(), b"h2");
        assert_eq!(server.alpn(), b"h2");
        assert_ne!(client.cipher_suite, 0);
        // Ids belong to the handle that made them.
        assert_eq!(
            close_object(&kernel, client_handle, server.id),
            STATUS_INVALID_HANDLE
        );
        assert_eq!(
            send(&kernel, server_handle, client.id, b"x"),
            STATUS_INVALID_HANDLE
        );
        // Echo through the server, several sizes up to 256 KiB.
        for (i, len) in [1usize, 1000, 65536, 256 * 1024].into_iter().enumerate() {
            let data = pattern(len, i as u8);
            for chunk in data.chunks(MAX_SEND) {
                assert_eq!(
                    send(&kernel, client_handle, client.id, chunk),
                    STATUS_SUCCESS
                );
            }
            let at_server = recv_exact(&kernel, server_handle, server.id, len);
            assert!(at_server == data, "server received different bytes ({len})");
            for chunk in at_server.chunks(MAX_SEND) {
                assert_eq!(
                    send(&kernel, server_handle, server.id, chunk),
                    STATUS_SUCCESS
                );
            }
            let back = recv_exact(&kernel, client_handle, client.id, len);
            assert!(back == data, "client received different bytes ({len})");
        }
        let s = stats(&kernel, server_handle);
        assert_eq!((s.connections_open, s.listeners_open), (2, 1));
        assert!(s.handshakes_ok >= 2, "{s:?}");
        assert!(s.bytes_sent >= 2 * (1 + 1000 + 65536 + 256 * 1024), "{s:?}");
        assert!(s.pool_bytes > 0);
        // Graceful close: SHUTDOWN completes after close_notify and the disconnect; the server
        // then reads the end of the stream (0 bytes).
        assert_eq!(shutdown(&kernel, client_handle, client.id), STATUS_SUCCESS);
        let end = recv_async(&kernel, server_handle, server.id, 16)
            .wait(WAIT)
            .unwrap();
        assert_eq!(end, b"", "the end of the stream");
        assert_eq!(
            close_object(&kernel, server_handle, server.id),
            STATUS_SUCCESS
        );
        assert_eq!(
            close_object(&kernel, client_handle, client.id),
            STATUS_SUCCESS
        );
        assert_eq!(
            close_object(&kernel, server_handle, listener.id),
            STATUS_SUCCESS
        );
        assert_eq!(
            close_object(&kernel, server_handle, listener.id),
            STATUS_INVALID_HANDLE,
            "closed ids are gone"
        );
        kernel.close(server_handle).unwrap();
        kernel.close(client_handle).unwrap();
        kernel.unload().unwrap();
        // Teardown never waits on the LSA: both contexts and both credentials were released
        // with the asynchronous calls.
        for (sync, asynchronous) in [
            ("DeleteSecurityContext", "SspiDeleteSecurityContextAsync"),
            ("FreeCredentialsHandle", "SspiFreeCredentialsHandleAsync"),
        ] {
            assert_eq!(
                (
                    kernel.sspi_release_calls(sync),
                    kernel.sspi_release_calls(asynchronous)
                ),
                (0, 2),
                "{sync} / {asynchronous}"
            );
        }
        kernel.shutdown().unwrap();
    });
}
