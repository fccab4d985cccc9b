//! kemu's WSK provider driven by a test-only client written the way a driver uses WSK: IRPs
//! from IoAllocateIrp with a completion routine that signals an event and returns
//! STATUS_MORE_PROCESSING_REQUIRED, nonpaged buffers described by MDLs, real loopback peers
//! (std TCP) on the other side.

use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use kemu::{CallbackSchedule, FaultPlan, Kernel, KernelConfig, KernelError};
use ksys::imports::*;
use ksys::ntdef::*;
use ksys::wsk::*;

use kemu::testing::wsk::*;

mod addresses;
mod endings;
mod lifetime;

fn boot(callbacks: CallbackSchedule) -> Kernel {
    kemu::exports::bind_native(IMPORT_DIRECTORY);
    Kernel::boot(KernelConfig {
        faults: FaultPlan {
            callbacks,
            ..FaultPlan::default()
        },
        ..KernelConfig::from_env()
    })
}

/// Every schedule the provider may complete with.
const SCHEDULES: [CallbackSchedule; 3] = [
    CallbackSchedule::Inline,
    CallbackSchedule::Deferred,
    CallbackSchedule::Random,
];

#[test]
fn echo_server_serves_std_clients_under_every_schedule() {
    for schedule in SCHEDULES {
        let kernel = boot(schedule);
        let (tx, rx) = std::sync::mpsc::channel::<u16>();
        std::thread::scope(|scope| {
            let server = scope.spawn(|| {
                kernel.run("echo server", move || {
                    let client = Client::register();
                    let (listener, port) = listen(&client);
                    tx.send(port).unwrap();
                    let mut served = 0;
                    for _ in 0..3 {
                        let (s, peer) = accept(listener);
                        assert_eq!(*peer.ip(), Ipv4Addr::LOCALHOST);
                        let buffer = Buffer::new(4096);
                        loop {
                            let (status, n) = receive(s, &buffer, 4096);
                            assert_eq!(status, STATUS_SUCCESS);
                            if n == 0 {
                                break;
                            }
                            assert_eq!(send(s, &buffer, n), (STATUS_SUCCESS, n));
                            served += n;
                        }
                        assert_eq!(disconnect(s, 0), STATUS_SUCCESS);
                        close(s);
                    }
                    close(listener);
                    client.finish();
                    served
                })
            });
            let port = rx.recv().unwrap();
            let mut total = 0;
            for i in 0..3u32 {
                let mut peer = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
                let message: Vec<u8> = (0..10_000u32).map(|b| (b * 7 + i) as u8).collect();
                peer.write_all(&message).unwrap();
                peer.shutdown(std::net::Shutdown::Write).unwrap();
                let mut echoed = Vec::new();
                peer.read_to_end(&mut echoed).unwrap();
                assert_eq!(echoed, message, "schedule {schedule:?}");
                total += message.len();
            }
            assert_eq!(server.join().unwrap().unwrap(), total);
        });
        kernel
            .shutdown()
            .unwrap_or_else(|e| panic!("{schedule:?}: {e}"));
    }
}

#[test]
fn client_sends_and_receives_a_megabyte_through_a_std_echo_peer() {
    for schedule in SCHEDULES {
        let kernel = boot(schedule);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).unwrap();
            }
        });
        const TOTAL: usize = 1 << 20;
        let received = kernel
            .run("client", move || {
                let client = Client::register();
                let s = connect(&client, port).unwrap();
                let mut out = Buffer::new(TOTAL);
                for (i, b) in out.bytes().iter_mut().enumerate() {
                    *b = (i * 31 % 251) as u8;
                }
                let sent = send(s, &out, TOTAL);
                assert_eq!(sent, (STATUS_SUCCESS, TOTAL), "no partial sends");
                let mut input = Buffer::new(TOTAL);
                let mut got = 0;
                while got < TOTAL {
                    let mut wsk = input.wsk(got as u32, TOTAL - got);
                    // SAFETY: a live connection socket; the buffer outlives the call.
                    let (status, n) = call(|irp| unsafe {
                        conn(s).WskReceive.unwrap()(s.raw(), &mut wsk, 0, irp)
                    });
                    assert_eq!(status, STATUS_SUCCESS);
                    assert!(n > 0, "early FIN");
                    got += n;
                }
                let same = input.bytes() == out.bytes();
                assert_eq!(disconnect(s, 0), STATUS_SUCCESS);
                let (status, n) = receive(s, &input, 16);
                assert_eq!(
                    (status, n),
                    (STATUS_SUCCESS, 0),
                    "the peer's FIN after our FIN"
                );
                close(s);
                client.finish();
                same
            })
            .unwrap();
        assert!(received, "echoed bytes differ");
        peer.join().unwrap();
        kernel.shutdown().unwrap();
    }
}

/// A registered client kept across kernel-thread calls of one test.
#[derive(Clone, Copy, Debug)]
struct ClientRef(usize);

impl ClientRef {
    /// Releases, deregisters and frees the client (on a kernel thread).
    fn finish(self, kernel: &Kernel) {
        kernel
            .run("deregister", move || {
                // SAFETY: made by Box::into_raw in `connected_pair`, finished once.
                unsafe { Box::from_raw(self.0 as *mut Client) }.finish()
            })
            .unwrap();
    }
}

/// Connects to a std listener: the kernel socket, the peer's stream and the client.
fn connected_pair(kernel: &Kernel) -> (Sock, TcpStream, ClientRef) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (s, client) = kernel
        .run("connect", move || {
            let client = Client::register();
            let s = connect(&client, port).unwrap();
            (s, ClientRef(Box::into_raw(Box::new(client)) as usize))
        })
        .unwrap();
    let (peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (s, peer, client)
}

#[test]
fn a_thousand_concurrent_loopback_connections() {
    rlimit::increase_nofile_limit(8192).unwrap();
    const N: usize = 1000;
    let kernel = boot(CallbackSchedule::Random);
    let (tx, rx) = std::sync::mpsc::channel::<u16>();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            kernel.run("server", move || {
                let client = Client::register();
                let (listener, port) = listen(&client);
                tx.send(port).unwrap();
                let sockets: Vec<Sock> = (0..N).map(|_| accept(listener).0).collect();
                // Every connection is open at once; each gets its index back.
                let buffer = Buffer::new(8);
                for &s in &sockets {
                    let (status, n) = receive(s, &buffer, 8);
                    assert_eq!((status, n), (STATUS_SUCCESS, 8));
                    assert_eq!(send(s, &buffer, 8), (STATUS_SUCCESS, 8));
                }
                for s in sockets {
                    assert_eq!(disconnect(s, 0), STATUS_SUCCESS);
                    close(s);
                }
                close(listener);
                client.finish();
            })
        });
        let port = rx.recv().unwrap();
        let mut peers: Vec<TcpStream> = (0..N)
            .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap())
            .collect();
        for (i, p) in peers.iter_mut().enumerate() {
            p.write_all(&(i as u64).to_le_bytes()).unwrap();
        }
        for (i, p) in peers.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            p.read_exact(&mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b), i as u64);
        }
        server.join().unwrap().unwrap();
    });
    kernel.shutdown().unwrap();
}

/// Sends `rounds` small buffers on each socket in turn; the names of the threads their
/// completion routines ran on, per socket.
fn send_completion_threads(kernel: &Kernel, sockets: Vec<Sock>, rounds: usize) -> Vec<Vec<String>> {
    kernel
        .run("sends", move || {
            let buffer = Buffer::new(16);
            let mut threads = vec![Vec::new(); sockets.len()];
            for _ in 0..rounds {
                for (i, &s) in sockets.iter().enumerate() {
                    let mut wsk = buffer.wsk(0, 16);
                    // SAFETY: a live connection socket; the buffer outlives the call.
                    let call = Call::start(|irp| unsafe {
                        conn(s).WskSend.unwrap()(s.raw(), &mut wsk, 0, irp)
                    });
                    let (status, n, thread) = call.wait_noting_thread();
                    assert_eq!((status, n), (STATUS_SUCCESS, 16));
                    threads[i].push(thread);
                }
            }
            threads
        })
        .unwrap()
}

#[test]
fn a_connections_deferred_completions_stay_on_one_processor_and_two_connections_use_two() {
    for processors in [2, 1] {
        kemu::exports::bind_native(IMPORT_DIRECTORY);
        let kernel = Kernel::boot(KernelConfig {
            faults: FaultPlan {
                callbacks: CallbackSchedule::Deferred,
                ..FaultPlan::default()
            },
            processors,
            ..KernelConfig::from_env()
        });
        // Made one after the other: consecutive sockets, so consecutive processors.
        let (a, mut peer_a, client_a) = connected_pair(&kernel);
        let (b, mut peer_b, client_b) = connected_pair(&kernel);
        let threads = send_completion_threads(&kernel, vec![a, b], 8);
        let mut got = vec![0u8; 8 * 16];
        peer_a.read_exact(&mut got).unwrap();
        peer_b.read_exact(&mut got).unwrap();
        for (socket, names) in threads.iter().enumerate() {
            assert!(
                names.iter().all(|n| n == &names[0] && n.contains("dpc")),
                "{processors} processor(s): socket {socket}'s deferred completions ran on {names:?}"
            );
        }
        if processors == 2 {
            assert_ne!(
                threads[0][0], threads[1][0],
                "two connections' deferred completions share one processor"
            );
        } else {
            assert_eq!(
                threads[0][0], threads[1][0],
                "one processor, one DPC thread"
            );
        }
        kernel
            .run("close", move || {
                close(a);
                close(b);
            })
            .unwrap();
        client_a.finish(&kernel);
        client_b.finish(&kernel);
        kernel.shutdown().unwrap();
    }
}
