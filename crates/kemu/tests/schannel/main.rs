//! kemu's kernel Schannel driven like a driver drives it (async calls whose callbacks signal the
//! issuing thread), between two kemu contexts and against real peers (openssl), over loopback.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use kemu::testing::sspi::{
    CredentialSpec, Tls, acquire, acquire_raw, client_credentials, client_tls_parameters,
    free_credential,
};
use kemu::{CallbackSchedule, FaultPlan, Kernel, KernelConfig, TestCa, Thumbprint, Validity};
use ksys::schannel::*;
use ksys::sspi::*;

mod async_rules;

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

/// Reads at most `max` bytes per call (records arrive split across reads).
struct Chunked<T> {
    inner: T,
    max: usize,
    rng: Option<fastrand::Rng>,
}

impl<T: std::io::Read> std::io::Read for Chunked<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let limit = match &mut self.rng {
            Some(r) => r.usize(1..=self.max),
            None => self.max,
        };
        let n = buf.len().min(limit);
        self.inner.read(&mut buf[..n])
    }
}

impl<T: Write> Write for Chunked<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn records_fed_byte_by_byte_and_in_random_splits() {
    let kernel = boot(CallbackSchedule::Random);
    let (_ca, thumbprint, _) = server_identity(&kernel, &["localhost"], Validity::Current);
    for (max, random) in [(1usize, false), (7, true), (1500, true)] {
        let (c, s) = tcp_pair();
        let message: Vec<u8> = (0..40_000u32).map(|i| (i * 13 % 256) as u8).collect();
        let expected = message.clone();
        std::thread::scope(|scope| {
            let server = scope.spawn(|| {
                kernel
                    .run("server", move || {
                        let mut io = Chunked {
                            inner: s,
                            max,
                            rng: random.then(|| fastrand::Rng::with_seed(max as u64)),
                        };
                        let cred = acquire(&CredentialSpec {
                            inbound: true,
                            thumbprint: Some(thumbprint),
                            ..Default::default()
                        })
                        .unwrap();
                        let mut tls = Tls::server(cred, &[], 0);
                        tls.handshake(&mut io).unwrap();
                        let mut got = Vec::new();
                        while let Some(p) = tls.read(&mut io).unwrap() {
                            got.extend_from_slice(&p);
                        }
                        tls.delete();
                        free_credential(cred);
                        got
                    })
                    .unwrap()
            });
            kernel
                .run("client", move || {
                    let mut io = Chunked {
                        inner: c,
                        max,
                        rng: random.then(|| fastrand::Rng::with_seed(max as u64 + 1)),
                    };
                    let cred = acquire(&CredentialSpec::default()).unwrap();
                    let mut tls = Tls::client(cred, "localhost", &[], 0);
                    tls.handshake(&mut io).unwrap();
                    // Coalesced: many records in one write.
                    let mut wire = tls.encrypt(&message).unwrap();
                    wire.extend(tls.close_notify().unwrap());
                    io.write_all(&wire).unwrap();
                    tls.delete();
                    free_credential(cred);
                })
                .unwrap();
            assert_eq!(server.join().unwrap(), expected, "chunks of at most {max}");
        });
    }
    kernel.shutdown().unwrap();
}

#[test]
fn ten_megabytes_each_way_intact() {
    let kernel = boot(CallbackSchedule::Random);
    let (_ca, thumbprint, _) = server_identity(&kernel, &["localhost"], Validity::Current);
    let mut rng = fastrand::Rng::with_seed(7);
    let message: Vec<u8> = (0..10 << 20).map(|_| rng.u8(..)).collect();
    let (echoed, _) = kemu_to_kemu(&kernel, thumbprint, 0, message.clone());
    assert!(echoed == message, "10 MiB came back altered");
    kernel.shutdown().unwrap();
}

/// The client's credential: acquired for one handshake, or one the caller keeps across several.
#[derive(Clone)]
enum ClientCredential {
    Acquire(CredentialSpec),
    Shared(SecHandle),
}

/// Client handshake against a kemu server; returns the client's status.
fn client_status(
    kernel: &Kernel,
    server: Thumbprint,
    target: &'static str,
    spec: CredentialSpec,
    client_alpn: &'static [&'static str],
    server_alpn: &'static [&'static str],
) -> (SECURITY_STATUS, SECURITY_STATUS) {
    client_status_using(
        kernel,
        server,
        target,
        ClientCredential::Acquire(spec),
        client_alpn,
        server_alpn,
    )
}

fn client_status_using(
    kernel: &Kernel,
    server: Thumbprint,
    target: &'static str,
    client_credential: ClientCredential,
    client_alpn: &'static [&'static str],
    server_alpn: &'static [&'static str],
) -> (SECURITY_STATUS, SECURITY_STATUS) {
    let (mut c, mut s) = tcp_pair();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            kernel
                .run("server", move || {
                    let cred = acquire(&CredentialSpec {
                        inbound: true,
                        thumbprint: Some(server),
                        ..Default::default()
                    })
                    .unwrap();
                    let mut tls = Tls::server(cred, server_alpn, 0);
                    let status = tls.handshake(&mut s).err().unwrap_or(SEC_E_OK);
                    drop(s);
                    tls.delete();
                    free_credential(cred);
                    status
                })
                .unwrap()
        });
        let client = kernel
            .run("client", move || {
                let cred = match &client_credential {
                    ClientCredential::Acquire(spec) => acquire(spec).unwrap(),
                    ClientCredential::Shared(cred) => *cred,
                };
                let mut tls = Tls::client(cred, target, client_alpn, 0);
                let status = tls.handshake(&mut c).err().unwrap_or(SEC_E_OK);
                if status == SEC_E_OK {
                    let certs: SecPkgContext_Certificates =
                        tls.query(SECPKG_ATTR_REMOTE_CERTIFICATES).unwrap();
                    assert_eq!(certs.cCertificates, 2, "leaf and CA");
                    // SAFETY: the chain SSPI allocated for us, freed once.
                    let freed = unsafe {
                        ksys::imports::FreeContextBuffer(certs.pbCertificateChain as *mut _)
                    };
                    assert_eq!(freed, SEC_E_OK);
                }
                drop(c);
                tls.delete();
                if let ClientCredential::Acquire(_) = client_credential {
                    free_credential(cred);
                }
                status
            })
            .unwrap();
        (client, server.join().unwrap())
    })
}

#[test]
fn certificate_failures_are_reported_as_schannel_does() {
    let kernel = boot(CallbackSchedule::Random);
    let (_ca, good, _) = server_identity(&kernel, &["localhost"], Validity::Current);
    let (_ca2, expired, _) = server_identity(&kernel, &["localhost"], Validity::Expired);
    let stranger = {
        let ca = TestCa::generate("not trusted").unwrap();
        let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
        kernel
            .cert_store()
            .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap()
    };
    let default = CredentialSpec::default;
    assert_eq!(
        client_status(&kernel, good, "localhost", default(), &[], &[]).0,
        SEC_E_OK
    );
    assert_eq!(
        client_status(&kernel, stranger, "localhost", default(), &[], &[]).0,
        SEC_E_UNTRUSTED_ROOT
    );
    assert_eq!(
        client_status(&kernel, good, "other.example", default(), &[], &[]).0,
        SEC_E_WRONG_PRINCIPAL
    );
    assert_eq!(
        client_status(&kernel, expired, "localhost", default(), &[], &[]).0,
        SEC_E_CERT_EXPIRED
    );
    let no_name_check = CredentialSpec {
        flags: SCH_CRED_NO_SERVERNAME_CHECK,
        ..default()
    };
    assert_eq!(
        client_status(&kernel, good, "other.example", no_name_check, &[], &[]).0,
        SEC_E_OK
    );
    let manual = CredentialSpec {
        flags: SCH_CRED_MANUAL_CRED_VALIDATION,
        ..default()
    };
    assert_eq!(
        client_status(&kernel, stranger, "localhost", manual, &[], &[]).0,
        SEC_E_OK,
        "manual validation leaves the chain to the caller"
    );
    let (client, server) = client_status(
        &kernel,
        good,
        "localhost",
        default(),
        &["http/1.1"],
        &["h2"],
    );
    assert_eq!(
        (client, server),
        (
            SEC_E_APPLICATION_PROTOCOL_MISMATCH,
            SEC_E_APPLICATION_PROTOCOL_MISMATCH
        )
    );
    kernel.shutdown().unwrap();
}

#[test]
fn a_credential_sees_roots_trusted_after_its_first_handshake() {
    // Contexts of one credential share its configuration (kemu caches it); trusting a new root
    // must still reach the next context, as the machine store does for Schannel.
    let kernel = boot(CallbackSchedule::Random);
    let ca = TestCa::generate("trusted later").unwrap();
    let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
    let store = kernel.cert_store();
    let server = store
        .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
        .unwrap();
    // Some other root, so the first configuration builds (and is cached) yet rejects the chain.
    let other = TestCa::generate("some other root").unwrap();
    store.add_root_pem(other.cert_pem().as_bytes()).unwrap();
    let cred = kernel
        .run("acquire", || acquire(&CredentialSpec::default()).unwrap())
        .unwrap();
    let shared = ClientCredential::Shared(cred);
    let before = client_status_using(&kernel, server, "localhost", shared.clone(), &[], &[]).0;
    assert_eq!(before, SEC_E_UNTRUSTED_ROOT);
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    let after = client_status_using(&kernel, server, "localhost", shared, &[], &[]).0;
    assert_eq!(after, SEC_E_OK, "the root trusted meanwhile was not used");
    kernel.run("free", move || free_credential(cred)).unwrap();
    kernel.shutdown().unwrap();
}

#[test]
fn missing_server_certificate_is_no_credentials() {
    let kernel = boot(CallbackSchedule::Random);
    let status = kernel
        .run("acquire", || {
            acquire(&CredentialSpec {
                inbound: true,
                thumbprint: Some(Thumbprint([0xAB; 20])),
                ..Default::default()
            })
            .unwrap_err()
        })
        .unwrap();
    assert_eq!(status, SEC_E_NO_CREDENTIALS);
    kernel.shutdown().unwrap();
}

#[test]
fn mutual_tls_with_a_client_certificate_from_the_store() {
    let kernel = boot(CallbackSchedule::Random);
    let (ca, server, _) = server_identity(&kernel, &["localhost"], Validity::Current);
    let client_cert = ca.issue(&["client.example"], Validity::Current).unwrap();
    let client = kernel
        .cert_store()
        .import_pem(
            client_cert.chain_pem.as_bytes(),
            client_cert.key_pem.as_bytes(),
        )
        .unwrap();
    // A certificate from a CA the machine does not trust.
    let stranger = TestCa::generate("untrusted CA")
        .unwrap()
        .issue(&["client.example"], Validity::Current)
        .unwrap();
    let untrusted = kernel
        .cert_store()
        .import_pem(stranger.chain_pem.as_bytes(), stranger.key_pem.as_bytes())
        .unwrap();
    let run = |cert: Option<Thumbprint>| {
        let (mut c, mut s) = tcp_pair();
        std::thread::scope(|scope| {
            let srv = scope.spawn(|| {
                kernel
                    .run("server", move || {
                        let cred = acquire(&CredentialSpec {
                            inbound: true,
                            thumbprint: Some(server),
                            ..Default::default()
                        })
                        .unwrap();
                        let mut tls = Tls::server(cred, &[], ASC_REQ_MUTUAL_AUTH as u32);
                        let status = tls.handshake(&mut s).err().unwrap_or(SEC_E_OK);
                        let mut peer = 0;
                        let mut verdict = Err(SEC_E_INTERNAL_ERROR);
                        if status == SEC_E_OK {
                            let certs = tls
                                .query::<SecPkgContext_Certificates>(
                                    SECPKG_ATTR_REMOTE_CERTIFICATES,
                                )
                                .unwrap();
                            if !certs.pbCertificateChain.is_null() {
                                // SAFETY: the chain SSPI allocated for us, freed once.
                                let freed = unsafe {
                                    ksys::imports::FreeContextBuffer(
                                        certs.pbCertificateChain as *mut _,
                                    )
                                };
                                assert_eq!(freed, SEC_E_OK);
                            }
                            peer = certs.cCertificates;
                            verdict = tls
                                .query::<SecPkgContext_CertificateValidationResult>(
                                    SECPKG_ATTR_CERT_CHECK_RESULT_INPROC,
                                )
                                .map(|v| v.hrVerifyChainStatus as u32);
                        }
                        drop(s);
                        tls.delete();
                        free_credential(cred);
                        (status, peer, verdict)
                    })
                    .unwrap()
            });
            let status = kernel
                .run("client", move || {
                    let cred = acquire(&CredentialSpec {
                        thumbprint: cert,
                        ..Default::default()
                    })
                    .unwrap();
                    let mut tls = Tls::client(cred, "localhost", &[], 0);
                    let status = tls.handshake(&mut c).err().unwrap_or(SEC_E_OK);
                    // TLS 1.3: the server judges the client's certificate after the client
                    // finished; its verdict arrives as an alert on the next read.
                    let status = if status == SEC_E_OK {
                        tls.read(&mut c).err().unwrap_or(SEC_E_OK)
                    } else {
                        status
                    };
                    drop(c);
                    tls.delete();
                    free_credential(cred);
                    status
                })
                .unwrap();
            (status, srv.join().unwrap())
        })
    };
    // Schannel completes ASC_REQ_MUTUAL_AUTH whatever the client sends; the verdict comes from
    // SECPKG_ATTR_CERT_CHECK_RESULT_INPROC (MsQuic's tls_schannel.c reads it so).
    let (_, (status, peer, verdict)) = run(Some(client));
    assert_eq!((status, peer, verdict), (SEC_E_OK, 2, Ok(0)));
    let (_, (status, peer, verdict)) = run(None);
    assert_eq!(
        (status, peer, verdict),
        (SEC_E_OK, 0, Err(SEC_E_NO_CREDENTIALS)),
        "no certificate: the handshake completes, the verdict says none came"
    );
    let (_, (status, peer, verdict)) = run(Some(untrusted));
    assert_eq!(
        (status, peer, verdict),
        (SEC_E_OK, 2, Ok(0x800B_0109)),
        "an untrusted chain: CERT_E_UNTRUSTEDROOT"
    );
    kernel.shutdown().unwrap();
}
