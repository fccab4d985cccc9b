//! Bulk EncryptMessage + DecryptMessage throughput through kemu's kernel Schannel against raw
//! rustls doing the same work in the same run (the ratio is what to read).
//!
//! `cargo run --release -p kemu --example sspi_bench [MEGABYTES]` (default 256).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kemu::testing::sspi::{CredentialSpec, Tls, acquire, free_credential};
use kemu::{FaultPlan, Kernel, KernelConfig, TestCa, Validity};

const CHUNK: usize = 16 * 1024;

/// Raw rustls: client encrypts, server decrypts, all in memory.
fn raw_rustls(bytes: usize, chain_pem: &str, key_pem: &str, ca_pem: &str) -> Duration {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client =
        rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
            .unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
    let mut wire = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        wire.clear();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut &wire[..]).unwrap();
        server.process_new_packets().unwrap();
        wire.clear();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut &wire[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    let chunk = vec![0x42u8; CHUNK];
    let mut plain = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut moved = 0;
    while moved < bytes {
        client.writer().write_all(&chunk).unwrap();
        wire.clear();
        client.write_tls(&mut wire).unwrap();
        let mut rd = &wire[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut got = 0;
        while got < CHUNK {
            got += server.reader().read(&mut plain).unwrap();
        }
        moved += CHUNK;
    }
    start.elapsed()
}

/// The same through SSPI: EncryptMessage on the client context, DecryptMessage on the server's.
fn kemu_sspi(kernel: &Kernel, bytes: usize, thumbprint: kemu::Thumbprint) -> Duration {
    kernel
        .run("bench", move || {
            let server_cred = acquire(&CredentialSpec {
                inbound: true,
                thumbprint: Some(thumbprint),
                ..Default::default()
            })
            .unwrap();
            let client_cred = acquire(&CredentialSpec {
                disabled_protocols: ksys::schannel::SP_PROT_TLS1_2_CLIENT,
                ..Default::default()
            })
            .unwrap();
            let mut server = Tls::server(server_cred, &[], 0);
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            Tls::pump_handshake(&mut client, &mut server).unwrap();
            let chunk = vec![0x42u8; CHUNK];
            let start = Instant::now();
            let mut moved = 0;
            while moved < bytes {
                let wire = client.encrypt(&chunk).unwrap();
                server.incoming.extend_from_slice(&wire);
                let mut got = 0;
                while got < CHUNK {
                    got += server.decrypt_buffered().unwrap().unwrap().len();
                }
                moved += CHUNK;
            }
            let elapsed = start.elapsed();
            server.delete();
            client.delete();
            free_credential(server_cred);
            free_credential(client_cred);
            elapsed
        })
        .unwrap()
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
    let kernel = Kernel::boot(KernelConfig {
        faults: FaultPlan::none(),
        ..KernelConfig::from_env()
    });
    let ca = TestCa::generate("bench CA").unwrap();
    let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
    let store = kernel.cert_store();
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    let thumbprint = store
        .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
        .unwrap();
    let best = |f: &dyn Fn() -> Duration| (0..3).map(|_| f()).min().unwrap();
    let raw = best(&|| raw_rustls(bytes, &issued.chain_pem, &issued.key_pem, &ca.cert_pem()));
    let sspi = best(&|| kemu_sspi(&kernel, bytes, thumbprint));
    println!(
        "TLS 1.3 bulk encrypt+decrypt, {megabytes} MiB in {} KiB records (best of 3)",
        CHUNK / 1024
    );
    println!(
        "  raw rustls:                       {:8.1} MB/s",
        rate(bytes, raw)
    );
    println!(
        "  EncryptMessage/DecryptMessage:    {:8.1} MB/s   ratio {:.2}",
        rate(bytes, sspi),
        raw.as_secs_f64() / sspi.as_secs_f64()
    );
    kernel.shutdown().expect("no leaks");
}
