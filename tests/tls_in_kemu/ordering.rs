//! SEND, RECV and SHUTDOWN in flight: a full queue pends them, cancellation works, order holds.

use super::*;

#[test]
fn send_and_shutdown_pend_on_a_full_queue_and_can_be_cancelled() {
    isolated(
        "ordering::send_and_shutdown_pend_on_a_full_queue_and_can_be_cancelled",
        || {
            let (kernel, a, b, client, _server) = connected_pair();
            // The server never reads: the client's queue (1 MiB) fills after the receive window
            // and the socket buffers, and a SEND then waits.
            let chunk = pattern(MAX_SEND, 5);
            let driver = support::client(&kernel, b);
            // Nothing moves any more once the socket buffers and the server's receive window
            // are full behind the queue (on a busy machine that takes a while).
            let settle = || {
                let mut moved = stats(&kernel, a).bytes_sent;
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(300));
                    let now = stats(&kernel, a).bytes_sent;
                    if now == moved {
                        return;
                    }
                    moved = now;
                }
            };
            let mut parked = None;
            for _ in 0..2000 {
                let io = driver.send_async(client.id, &chunk).unwrap();
                if io.poll(Duration::from_millis(300)).unwrap().is_none() {
                    settle();
                    if !io.is_complete() {
                        parked = Some(io);
                        break;
                    }
                }
                // It found room (maybe while everything settled).
                assert_eq!(status_of(io.wait(WAIT)), STATUS_SUCCESS);
            }
            let send = parked.expect("a SEND pends once the queue is full");
            assert_eq!(stats(&kernel, a).pending_operations, 1);
            send.cancel();
            assert_eq!(status_of(send.wait(WAIT)), STATUS_CANCELLED);
            // SHUTDOWN waits for the queue to drain, which it cannot: cancel it too.
            let shutdown = driver.shutdown_async(client.id).unwrap();
            assert!(shutdown.poll(Duration::from_millis(300)).unwrap().is_none());
            shutdown.cancel();
            assert_eq!(status_of(shutdown.wait(WAIT)), STATUS_CANCELLED);
            drop(driver);
            assert_eq!(stats(&kernel, a).pending_operations, 0);
            kernel.close(a).unwrap();
            kernel.close(b).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn sends_and_receives_in_flight_together_keep_their_order() {
    isolated(
        "ordering::sends_and_receives_in_flight_together_keep_their_order",
        || {
            let (kernel, a, b, client, server) = connected_pair();
            // The server does not read yet: SENDs of 64 KiB (distinct contents, so overtaking
            // shows) until seven wait for room together — the client's queue, the server's
            // receive window and the socket buffers are full.
            let driver = support::client(&kernel, b);
            let send_async = |k: usize| {
                let chunk = pattern(MAX_SEND, k as u8);
                let io = driver.send_async(client.id, &chunk).unwrap();
                (chunk, io)
            };
            // Issued without waiting: each SEND that fits completes at once, and once the
            // queue is full they wait — until seven wait together (room that opens meanwhile
            // only means more SENDs).
            let mut chunks = Vec::new();
            let mut sends = Vec::new();
            let mut most_waiting = 0;
            while sends.len() < 2000 && most_waiting < 7 {
                let (chunk, io) = send_async(chunks.len());
                chunks.push(chunk);
                sends.push(io);
                most_waiting = most_waiting.max(stats(&kernel, a).pending_operations);
            }
            assert!(most_waiting >= 7, "seven SENDs never waited together");
            // The server keeps four RECVs in flight and takes their results in the order it
            // issued them, as an overlapped reader does.
            let expected: Vec<u8> = chunks.concat();
            let mut received = Vec::with_capacity(expected.len());
            let mut in_flight: std::collections::VecDeque<PendingTransfer> = (0..4)
                .map(|_| recv_async(&kernel, a, server.id, 48 * 1024))
                .collect();
            while received.len() < expected.len() {
                let got = in_flight
                    .pop_front()
                    .unwrap()
                    .wait(WAIT)
                    .unwrap_or_else(|e| panic!("RECV: {e}"));
                assert!(!got.is_empty(), "end of stream at {}", received.len());
                received.extend_from_slice(&got);
                if received.len() < expected.len() {
                    in_flight.push_back(recv_async(&kernel, a, server.id, 48 * 1024));
                }
            }
            for (k, send) in sends.into_iter().enumerate() {
                if let Err(e) = send.wait(WAIT) {
                    panic!("SEND {k}: {e}");
                }
            }
            if let Some(at) = (0..expected.len()).find(|&i| received.get(i) != Some(&expected[i])) {
                panic!(
                    "the stream differs at byte {at} (in SEND {}): requests overtook one another",
                    at / MAX_SEND
                );
            }
            assert_eq!(received.len(), expected.len());
            // The RECVs still in flight end with the connection.
            assert_eq!(close_object(&kernel, a, server.id), STATUS_SUCCESS);
            for io in in_flight {
                assert_eq!(status_of(io.wait(WAIT)), STATUS_CANCELLED);
            }
            drop(driver);
            kernel.close(a).unwrap();
            kernel.close(b).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_send_reports_its_length_and_a_reused_buffer_carries_each_payload() {
    isolated(
        "ordering::a_send_reports_its_length_and_a_reused_buffer_carries_each_payload",
        || {
            let (kernel, a, b, client, server) = connected_pair();
            // At the device: SEND completes with IoStatus.Information = the payload's length
            // (what WriteFile would report), and the caller's buffer comes back as it was.
            let first = pattern(1000, 7);
            let io = kernel
                .ioctl_async_with(
                    b,
                    IOCTL_WSKTLS_SEND,
                    &SendRequest { id: client.id }.encode(),
                    first.clone(),
                )
                .unwrap();
            let done = io.take_timeout(WAIT).unwrap().expect("the SEND completes");
            assert_eq!(done.status, STATUS_SUCCESS);
            assert_eq!(done.information, first.len());
            assert_eq!(*done.output, first);
            // Through the client: one buffer handed over, given back and refilled for the next
            // SEND; one RECV buffer reused likewise. The stream must be both payloads in order.
            let driver = support::client(&kernel, b);
            let mut buffer = driver
                .send_async_owned(client.id, first.clone())
                .unwrap()
                .wait(WAIT)
                .unwrap();
            assert_eq!(buffer, first, "the SEND's buffer comes back whole");
            let second = pattern(1000, 99);
            buffer.copy_from_slice(&second);
            let back = driver
                .send_async_owned(client.id, buffer)
                .unwrap()
                .wait(WAIT)
                .unwrap();
            assert_eq!(back, second);
            let server_side = support::client(&kernel, a);
            let mut received = Vec::new();
            let mut reuse = vec![0u8; 700];
            while received.len() < 3000 {
                reuse.resize(700, 0xEE);
                let got = server_side
                    .recv_async_into(server.id, reuse)
                    .unwrap()
                    .wait(WAIT)
                    .unwrap();
                assert!(
                    !got.is_empty() && got.len() <= 700,
                    "RECV gave {}",
                    got.len()
                );
                received.extend_from_slice(&got);
                reuse = got;
            }
            assert_eq!(received, [first.clone(), first, second].concat());
            drop((driver, server_side));
            kernel.close(a).unwrap();
            kernel.close(b).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}
