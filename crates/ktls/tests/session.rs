//! ktls sessions and listeners under kemu: TLS server and client in the kernel, driven by async
//! kernel Schannel on WSK sockets and one work item each — against each other and against
//! openssl, with the verifier checking that nothing leaks.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kemu::testing::isolated;
use kemu::{Kernel, KernelConfig, NativeDriver, TestCa, Thumbprint, Validity};
use ksys::schannel::*;
use ksys::wsk::*;
use ktls::credential::{Credential, CredentialSpec, Versions};
use ktls::listener::{ListenState, Listener, ListenerConfig};
use ktls::session::{Config, Observer, Received, Role, Session, State};
use ktls::wsk::Provider;

mod test_driver {
    use core::sync::atomic::{AtomicUsize, Ordering};

    use ksys::kmdf::{self, ControlDeviceConfig, DriverEntryArgs, Request};
    use ksys::ntdef::*;
    use ksys::utf16;
    use ksys::wdf::functions::WdfDeviceWdmGetDeviceObject;
    use ksys::wdf::types::*;

    /// The control device's DEVICE_OBJECT (work items reference it).
    pub static DEVICE: AtomicUsize = AtomicUsize::new(0);

    const CONFIG: ControlDeviceConfig = ControlDeviceConfig {
        name: utf16!("\\Device\\KtlsSession"),
        symbolic_link: utf16!("\\DosDevices\\KtlsSession"),
        sddl: utf16!("D:P(A;;GA;;;SY)(A;;GA;;;BA)"),
        file_callbacks: None,
    };

    pub fn driver_entry(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
        let driver = kmdf::create_non_pnp_driver(args, unload)?;
        let device = kmdf::create_control_device(driver, &CONFIG)?;
        kmdf::create_default_parallel_queue(device, device_control)?;
        kmdf::finish_initializing(device);
        // SAFETY: the device just created is live until unload.
        let object = unsafe { WdfDeviceWdmGetDeviceObject(device) };
        DEVICE.store(object as usize, Ordering::SeqCst);
        Ok(())
    }

    extern "win64" fn unload(_driver: WDFDRIVER) {}

    extern "win64" fn device_control(_q: WDFQUEUE, req: WDFREQUEST, _o: usize, _i: usize, _c: u32) {
        Request::from_presented(req).complete(STATUS_INVALID_DEVICE_REQUEST, 0);
    }
}

ksys::kmdf_driver_entry!(test_driver::driver_entry);

fn device() -> *mut ksys::io::DEVICE_OBJECT {
    test_driver::DEVICE.load(std::sync::atomic::Ordering::SeqCst) as *mut _
}

/// Counts changes; waiters poll their condition after each.
#[derive(Clone, Default)]
struct Changes(Arc<(Mutex<u64>, Condvar)>);

impl Observer for Changes {
    fn changed(&self) {
        *self.0.0.lock().unwrap() += 1;
        self.0.1.notify_all();
    }
}

impl Changes {
    /// Waits until `ready` gives Some (checked after every change), at most 30 s.
    fn wait<R>(&self, what: &str, mut ready: impl FnMut() -> Option<R>) -> R {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut guard = self.0.0.lock().unwrap();
        loop {
            drop(guard);
            if let Some(r) = ready() {
                return r;
            }
            guard = self.0.0.lock().unwrap();
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            guard = self
                .0
                .1
                .wait_timeout(guard, Duration::from_millis(20))
                .unwrap()
                .0;
        }
    }
}

fn boot(seed_offset: u64) -> (Kernel, Thumbprint, String) {
    let mut config = KernelConfig::from_env();
    config.seed = config.seed.wrapping_add(seed_offset);
    let kernel = Kernel::boot(config);
    let ca = TestCa::generate("ktls session CA").unwrap();
    let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
    let store = kernel.cert_store();
    let thumbprint = store
        .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
        .unwrap();
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    kernel
        .load(NativeDriver {
            service_name: "ktlssession",
            entry: FxDriverEntry,
            imports: ksys::imports::IMPORT_DIRECTORY,
        })
        .unwrap();
    (kernel, thumbprint, ca.cert_pem())
}

fn v4(ip: [u8; 4], port: u16) -> SOCKADDR_STORAGE {
    let mut s = SOCKADDR_STORAGE {
        ss_family: AF_INET as u16,
        data: [0; 126],
    };
    s.data[0..2].copy_from_slice(&port.to_be_bytes());
    s.data[2..6].copy_from_slice(&ip);
    s
}

const ALL: Versions = Versions {
    tls12: true,
    tls13: true,
};

fn server_credential(thumbprint: Thumbprint) -> ktls::pool::PoolArc<Credential> {
    Credential::acquire(&CredentialSpec {
        inbound: true,
        thumbprint: Some(thumbprint.0),
        flags: 0,
        versions: ALL,
    })
    .unwrap()
}

fn client_credential(versions: Versions, flags: u32) -> ktls::pool::PoolArc<Credential> {
    Credential::acquire(&CredentialSpec {
        inbound: false,
        thumbprint: None,
        flags,
        versions,
    })
    .unwrap()
}

fn listen(
    provider: &Provider,
    credential: ktls::pool::PoolArc<Credential>,
    alpn: &[u8],
    changes: &Changes,
) -> Listener<Changes> {
    // SAFETY: the test driver's device and the captured provider outlive the listener.
    let listener = unsafe {
        Listener::start(
            device(),
            ListenerConfig {
                npi: provider.npi(),
                local: v4([127, 0, 0, 1], 0),
                alpn: alpn.to_vec(),
                require_client_certificate: false,
                max_queued: 256 * 1024,
                receive_window: 256 * 1024,
                backlog: 8,
            },
            credential,
            changes.clone(),
        )
    }
    .unwrap();
    changes.wait("listening", || {
        (listener.state() == ListenState::Listening).then_some(())
    });
    listener
}

fn connect(
    provider: &Provider,
    credential: ktls::pool::PoolArc<Credential>,
    port: u16,
    target: &str,
    alpn: &[u8],
    changes: &Changes,
) -> Session<Changes> {
    // SAFETY: as in `listen`.
    unsafe {
        Session::start(
            device(),
            Config {
                role: Role::Client {
                    npi: provider.npi(),
                    remote: v4([127, 0, 0, 1], port),
                    target: target.encode_utf16().collect(),
                },
                alpn: alpn.to_vec(),
                require_client_certificate: false,
                max_queued: 256 * 1024,
                receive_window: 256 * 1024,
            },
            credential,
            changes.clone(),
        )
    }
    .unwrap()
}

fn open(session: &Session<Changes>, changes: &Changes) {
    changes.wait("the handshake", || match session.state() {
        State::Handshaking => None,
        State::Open => Some(()),
        State::Closed => panic!("handshake failed: {:?}", session.failure()),
    });
}

/// Sends `data` from `client`, echoes it back through `server`, returns what came back; all
/// on this thread, non-blocking calls only, waiting for changes when nothing moved.
fn echo(
    client: &Session<Changes>,
    server: &Session<Changes>,
    changes: &Changes,
    data: &[u8],
) -> Vec<u8> {
    let mut to_send = data;
    let mut at_server: Vec<u8> = Vec::new();
    let mut got: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    changes.wait("echo", || {
        loop {
            let mut moved = false;
            if !to_send.is_empty() {
                let n = client.send(to_send).expect("client send");
                to_send = &to_send[n..];
                moved |= n > 0;
            }
            match server.recv(&mut buf) {
                Received::Data(n) => {
                    at_server.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Received::Pending => {}
                other => panic!("server receive: {other:?}"),
            }
            if !at_server.is_empty() {
                let n = server.send(&at_server).expect("server send");
                at_server.drain(..n);
                moved |= n > 0;
            }
            match client.recv(&mut buf) {
                Received::Data(n) => {
                    got.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Received::Pending => {}
                other => panic!("client receive: {other:?}"),
            }
            if got.len() >= data.len() {
                return Some(std::mem::take(&mut got));
            }
            if !moved {
                return None;
            }
        }
    })
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn driver_to_driver(versions: Versions, expect_protocol: u32) {
    let (kernel, thumbprint, _) = boot(0);
    kernel
        .run("driver-to-driver", move || {
            let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
            let changes = Changes::default();
            let listener = listen(
                &provider,
                server_credential(thumbprint),
                b"\x02h2",
                &changes,
            );
            let client = connect(
                &provider,
                client_credential(versions, 0),
                listener.local_port(),
                "localhost",
                b"\x08http/1.1\x02h2",
                &changes,
            );
            let server = changes.wait("an accepted session", || listener.next());
            open(&client, &changes);
            open(&server, &changes);
            let n = client.negotiated().unwrap();
            assert_eq!(n.protocol, expect_protocol);
            assert_eq!(n.alpn(), b"h2");
            assert_eq!(server.negotiated().unwrap().alpn(), b"h2");
            assert_ne!(n.cipher_suite, 0);
            // Echo sizes from 1 byte to 1 MiB through the server.
            for (i, len) in [1usize, 100, 16384, 16385, 100_000, 1 << 20]
                .into_iter()
                .enumerate()
            {
                let data = pattern(len, i as u8);
                let got = echo(&client, &server, &changes, &data);
                assert!(got == data, "length {len}: echo differs");
            }
            // Graceful close: the client's close_notify ends the server's stream.
            client.shutdown();
            changes.wait("client shutdown", || client.is_shut_down().then_some(()));
            changes.wait("end of stream", || {
                (server.recv(&mut [0u8; 16]) == Received::End).then_some(())
            });
            server.shutdown();
            changes.wait("end of stream", || {
                (client.recv(&mut [0u8; 16]) == Received::End).then_some(())
            });
            assert_eq!(client.counters().sent, server.counters().received);
            drop(client);
            drop(server);
            listener.close();
            changes.wait("listener closed", || {
                matches!(listener.state(), ListenState::Closed(_)).then_some(())
            });
            drop(listener);
            drop(provider);
        })
        .unwrap();
    kernel.shutdown().unwrap();
}

#[test]
fn driver_server_and_driver_client_tls13() {
    isolated("driver_server_and_driver_client_tls13", || {
        driver_to_driver(
            Versions {
                tls12: false,
                tls13: true,
            },
            SP_PROT_TLS1_3_CLIENT,
        )
    });
}

#[test]
fn driver_server_and_driver_client_tls12() {
    isolated("driver_server_and_driver_client_tls12", || {
        driver_to_driver(
            Versions {
                tls12: true,
                tls13: false,
            },
            SP_PROT_TLS1_2_CLIENT,
        )
    });
}
