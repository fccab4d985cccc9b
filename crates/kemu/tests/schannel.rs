//! kemu's kernel Schannel driven like a driver drives it (async calls whose callbacks signal the
//! issuing thread), between two kemu contexts and against real peers (openssl), over loopback.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use kemu::testing::sspi::{CredentialSpec, Tls, acquire, free_credential};
use kemu::{CallbackSchedule, FaultPlan, Kernel, KernelConfig, TestCa, Thumbprint, Validity};
use ksys::schannel::*;
use ksys::sspi::*;

fn boot(callbacks: CallbackSchedule) -> Kernel {
    kemu::exports::bind_native(ksys::imports::IMPORT_DIRECTORY);
    Kernel::boot(KernelConfig {
        faults: FaultPlan {
            callbacks,
            ..FaultPlan::default()
        },
        ..KernelConfig::from_env()
    })
}

/// A CA trusted by the kernel's Root store and a server certificate for `names` in MY.
fn server_identity(
    kernel: &Kernel,
    names: &[&str],
    validity: Validity,
) -> (TestCa, Thumbprint, kemu::IssuedCert) {
    let ca = TestCa::generate("kemu test CA").unwrap();
    let issued = ca.issue(names, validity).unwrap();
    let store = kernel.cert_store();
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    let thumbprint = store
        .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
        .unwrap();
    (ca, thumbprint, issued)
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    (client, server)
}

const TLS13_ONLY_CLIENT: u32 = SP_PROT_TLS1_2_CLIENT;
const TLS12_ONLY_CLIENT: u32 = SP_PROT_TLS1_3_CLIENT;

/// Client and server sessions in one kernel over a TCP pair; returns what each side read.
fn kemu_to_kemu(
    kernel: &Kernel,
    thumbprint: Thumbprint,
    client_disabled: u32,
    message: Vec<u8>,
) -> (Vec<u8>, u32) {
    let (mut c, mut s) = tcp_pair();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            kernel
                .run("server", move || {
                    let cred = acquire(&CredentialSpec {
                        inbound: true,
                        thumbprint: Some(thumbprint),
                        ..Default::default()
                    })
                    .unwrap();
                    let mut tls = Tls::server(cred, &["h2", "http/1.1"], 0);
                    tls.handshake(&mut s).unwrap();
                    let mut got = Vec::new();
                    while let Some(p) = tls.read(&mut s).unwrap() {
                        got.extend_from_slice(&p);
                    }
                    // Echo everything back, then close cleanly.
                    let wire = tls.encrypt(&got).unwrap();
                    s.write_all(&wire).unwrap();
                    s.write_all(&tls.close_notify().unwrap()).unwrap();
                    tls.delete();
                    free_credential(cred);
                    got.len()
                })
                .unwrap()
        });
        let client = kernel
            .run("client", move || {
                let cred = acquire(&CredentialSpec {
                    disabled_protocols: client_disabled,
                    ..Default::default()
                })
                .unwrap();
                let mut tls = Tls::client(cred, "localhost", &["http/1.1"], 0);
                tls.handshake(&mut c).unwrap();
                let info: SecPkgContext_ConnectionInfo =
                    tls.query(SECPKG_ATTR_CONNECTION_INFO).unwrap();
                let alpn: SecPkgContext_ApplicationProtocol =
                    tls.query(SECPKG_ATTR_APPLICATION_PROTOCOL).unwrap();
                assert_eq!(
                    (
                        alpn.ProtoNegoStatus,
                        &alpn.ProtocolId[..alpn.ProtocolIdSize as usize]
                    ),
                    (1, &b"http/1.1"[..])
                );
                let wire = tls.encrypt(&message).unwrap();
                c.write_all(&wire).unwrap();
                c.write_all(&tls.close_notify().unwrap()).unwrap();
                let mut echoed = Vec::new();
                while let Some(p) = tls.read(&mut c).unwrap() {
                    echoed.extend_from_slice(&p);
                }
                tls.delete();
                free_credential(cred);
                (echoed, info.dwProtocol)
            })
            .unwrap();
        assert_eq!(server.join().unwrap(), client.0.len());
        client
    })
}

#[test]
fn kemu_client_and_server_handshake_and_echo_tls13_and_tls12() {
    for schedule in [
        CallbackSchedule::Inline,
        CallbackSchedule::Deferred,
        CallbackSchedule::Random,
    ] {
        let kernel = boot(schedule);
        let (_ca, thumbprint, _) = server_identity(&kernel, &["localhost"], Validity::Current);
        let message: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let (echoed, protocol) =
            kemu_to_kemu(&kernel, thumbprint, TLS13_ONLY_CLIENT, message.clone());
        assert_eq!(echoed, message);
        assert_eq!(protocol, SP_PROT_TLS1_3_CLIENT);
        let (echoed, protocol) =
            kemu_to_kemu(&kernel, thumbprint, TLS12_ONLY_CLIENT, message.clone());
        assert_eq!(echoed, message);
        assert_eq!(protocol, SP_PROT_TLS1_2_CLIENT);
        kernel
            .shutdown()
            .unwrap_or_else(|e| panic!("{schedule:?}: {e}"));
    }
}
