//! Bulk throughput through kemu's WSK provider against a plain std TCP copy loop, in the same
//! run on the same machine (the ratio is what to read; absolute numbers are noisy).
//!
//! `cargo run --release -p kemu --example wsk_bench [MEGABYTES]` (default 256).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use kemu::testing::wsk::{Buffer, Client, close, connect, disconnect, receive, send};
use kemu::{CallbackIrql, CallbackSchedule, FaultPlan, Kernel, KernelConfig};
use ksys::ntdef::STATUS_SUCCESS;

const CHUNK: usize = 64 * 1024;

/// A std peer that drains everything it is sent; returns its port.
fn sink() -> (u16, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    (port, handle)
}

/// A std peer that sends `bytes` and closes; returns its port.
fn source(bytes: usize) -> (u16, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let buf = vec![0x5Au8; CHUNK];
        let mut sent = 0;
        while sent < bytes {
            let n = CHUNK.min(bytes - sent);
            s.write_all(&buf[..n]).unwrap();
            sent += n;
        }
        sent
    });
    (port, handle)
}

fn std_send(bytes: usize) -> Duration {
    let (port, peer) = sink();
    let start = Instant::now();
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let buf = vec![0xA5u8; CHUNK];
    let mut sent = 0;
    while sent < bytes {
        let n = CHUNK.min(bytes - sent);
        s.write_all(&buf[..n]).unwrap();
        sent += n;
    }
    drop(s);
    assert_eq!(peer.join().unwrap(), bytes);
    start.elapsed()
}

fn std_receive(bytes: usize) -> Duration {
    let (port, peer) = source(bytes);
    let start = Instant::now();
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, peer.join().unwrap());
    start.elapsed()
}

fn wsk_send(kernel: &Kernel, bytes: usize) -> Duration {
    let (port, peer) = sink();
    let elapsed = kernel
        .run("bench send", move || {
            let client = Client::register();
            let buffer = Buffer::new(CHUNK);
            let start = Instant::now();
            let s = connect(&client, port).unwrap();
            let mut sent = 0;
            while sent < bytes {
                let n = CHUNK.min(bytes - sent);
                assert_eq!(send(s, &buffer, n), (STATUS_SUCCESS, n));
                sent += n;
            }
            assert_eq!(disconnect(s, 0), STATUS_SUCCESS);
            let elapsed = start.elapsed();
            close(s);
            drop(buffer);
            client.finish();
            elapsed
        })
        .unwrap();
    assert_eq!(peer.join().unwrap(), bytes);
    elapsed
}

fn wsk_receive(kernel: &Kernel, bytes: usize) -> Duration {
    let (port, peer) = source(bytes);
    let elapsed = kernel
        .run("bench receive", move || {
            let client = Client::register();
            let buffer = Buffer::new(CHUNK);
            let start = Instant::now();
            let s = connect(&client, port).unwrap();
            let mut got = 0;
            loop {
                let (status, n) = receive(s, &buffer, CHUNK);
                assert_eq!(status, STATUS_SUCCESS);
                if n == 0 {
                    break;
                }
                got += n;
            }
            let elapsed = start.elapsed();
            assert_eq!(got, bytes);
            assert_eq!(disconnect(s, 0), STATUS_SUCCESS);
            close(s);
            drop(buffer);
            client.finish();
            elapsed
        })
        .unwrap();
    peer.join().unwrap();
    elapsed
}

fn rate(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let megabytes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let bytes = megabytes << 20;
    kemu::exports::bind_native(ksys::imports::IMPORT_DIRECTORY);
    println!(
        "bulk loopback, {megabytes} MiB in {} KiB calls (best of 3)",
        CHUNK / 1024
    );
    let best = |f: &dyn Fn() -> Duration| (0..3).map(|_| f()).min().unwrap();
    let std_tx = best(&|| std_send(bytes));
    let std_rx = best(&|| std_receive(bytes));
    println!(
        "  std TCP copy loop:  send {:8.1} MB/s   receive {:8.1} MB/s",
        rate(bytes, std_tx),
        rate(bytes, std_rx)
    );
    // Completion inline (what a send that fits the transport does) and deferred to the DISPATCH
    // completion thread (every completion crosses threads): the two ends of what the provider does.
    for (name, callbacks) in [
        ("inline", CallbackSchedule::Inline),
        ("deferred", CallbackSchedule::Deferred),
    ] {
        let plan = FaultPlan {
            callbacks,
            callback_irql: CallbackIrql::Lowest,
            ..FaultPlan::none()
        };
        let kernel = Kernel::boot(KernelConfig {
            faults: plan,
            ..KernelConfig::from_env()
        });
        let _ = wsk_send(&kernel, bytes / 8);
        let wsk_tx = best(&|| wsk_send(&kernel, bytes));
        let wsk_rx = best(&|| wsk_receive(&kernel, bytes));
        println!(
            "  WSK, {name:8} completion: send {:8.1} MB/s ({:.2}x std)   receive {:8.1} MB/s ({:.2}x std)",
            rate(bytes, wsk_tx),
            std_tx.as_secs_f64() / wsk_tx.as_secs_f64(),
            rate(bytes, wsk_rx),
            std_rx.as_secs_f64() / wsk_rx.as_secs_f64()
        );
        kernel.shutdown().expect("no leaks");
    }
}
