//! The driver holding thousands of connections on one handle under kemu, and serving one
//! connection's requests without walking the others'.

use std::collections::VecDeque;
use std::time::Duration;

use kemu::testing::isolated;
use ksys::ntdef::*;

mod support;
use support::*;

/// Connections each side holds at once (the figure for a test under kemu).
const CONNECTIONS: usize = 2000;
/// Connection handshakes in flight at once while they are made.
const WINDOW: usize = 64;
/// Echo round trips on one connection while every other one has a RECV waiting.
const ROUND_TRIPS: u64 = 50;

#[test]
fn two_thousand_connections_on_one_handle_and_one_connection_served_alone() {
    isolated(
        "two_thousand_connections_on_one_handle_and_one_connection_served_alone",
        || {
            let (kernel, thumbprint) = boot();
            let server_handle = open(&kernel);
            let client_handle = open(&kernel);
            let listener = listen(&kernel, server_handle, thumbprint, b"");
            let pool_before = stats(&kernel, server_handle).pool_bytes;

            // Make the connections, WINDOW handshakes at a time — the first one alone, so its
            // two ends are known to be each other's (the ACCEPTs of a window take whichever
            // connection is ready first). The rest are only counted.
            let mut pairs: Vec<(u64, u64)> = Vec::with_capacity(CONNECTIONS);
            let mut in_flight = VecDeque::new();
            while pairs.len() < CONNECTIONS {
                let window = if pairs.is_empty() { 1 } else { WINDOW };
                while in_flight.len() < window && pairs.len() + in_flight.len() < CONNECTIONS {
                    let accept = accept_async(&kernel, server_handle, listener.id);
                    let connect =
                        connect_async(&kernel, client_handle, listener.port, b"localhost", b"");
                    in_flight.push_back((connect, accept));
                }
                let (connect, accept) = in_flight.pop_front().unwrap();
                let client = info(connect);
                let server = info(accept);
                pairs.push((client.id, server.id));
                if pairs.len() % 250 == 0 {
                    eprintln!("{} connections", pairs.len());
                }
            }
            let s = stats(&kernel, client_handle);
            assert_eq!(
                (s.connections_open, s.listeners_open),
                (2 * CONNECTIONS as u64, 1),
                "{s:?}"
            );
            assert!(s.max_connections_per_handle >= 16_384, "{s:?}");
            // An idle established connection holds at most 16 KiB of pool (each gives its
            // buffers back once nothing has moved for 200 ms).
            let sessions = 2 * CONNECTIONS as u64;
            let mut per_session = u64::MAX;
            for _ in 0..100 {
                let pool = stats(&kernel, server_handle).pool_bytes;
                per_session = pool.saturating_sub(pool_before) / sessions;
                if per_session <= 16 * 1024 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("{per_session} bytes of pool per idle session");
            assert!(
                per_session <= 16 * 1024,
                "{per_session} bytes of pool per idle session"
            );

            // Every server connection but the first waits in a RECV.
            let waiting: Vec<_> = pairs[1..]
                .iter()
                .map(|&(_, server)| recv_async(&kernel, server_handle, server, 64))
                .collect();
            let (client, server) = pairs[0];
            let before = stats(&kernel, server_handle);
            assert_eq!(before.pending_operations, CONNECTIONS as u64 - 1);
            eprintln!("RECVs waiting");
            for i in 0..ROUND_TRIPS {
                let message = pattern(100, i as u8);
                assert_eq!(
                    send(&kernel, client_handle, client, &message),
                    STATUS_SUCCESS
                );
                let got = recv_exact(&kernel, server_handle, server, message.len());
                assert_eq!(send(&kernel, server_handle, server, &got), STATUS_SUCCESS);
                assert_eq!(
                    recv_exact(&kernel, client_handle, client, message.len()),
                    message
                );
            }
            let after = stats(&kernel, server_handle);
            // Each round trip re-examines a handful of requests of its own two connections;
            // re-examining the waiting RECVs would cost CONNECTIONS per change.
            let examined = after.requests_examined - before.requests_examined;
            eprintln!("{examined} requests re-examined for {ROUND_TRIPS} round trips");
            assert!(
                examined < ROUND_TRIPS * 20,
                "{examined} requests re-examined for {ROUND_TRIPS} round trips beside {} waiting RECVs",
                CONNECTIONS - 1
            );
            assert_eq!(after.pending_operations, CONNECTIONS as u64 - 1);

            // The waiting RECVs are still served: every other client sends one byte, and each
            // other server connection gets one.
            for &(client, _) in &pairs[1..] {
                assert_eq!(send(&kernel, client_handle, client, b"!"), STATUS_SUCCESS);
            }
            for io in waiting {
                let got = io
                    .wait(Duration::from_secs(60))
                    .unwrap_or_else(|e| panic!("RECV: {e}"));
                assert_eq!(got, b"!");
            }
            // Closing the handles closes everything; unload finds nothing left.
            kernel.close(client_handle).unwrap();
            kernel.close(server_handle).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}
