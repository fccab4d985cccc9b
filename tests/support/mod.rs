//! What the driver-in-kemu suites share: booting a kernel with the driver (native, or the image
//! `WSKTLS_IMAGE` names) and a server certificate, and short helpers over the typed client the
//! `wsktls` command uses (`wsktls_client::driver::Driver`), so every well-formed request a suite
//! makes goes through the one IOCTL client. Suites call `kernel.ioctl` themselves only for what
//! that client never sends (malformed requests) or cannot tell (whether a cancel routine ran).

// Each suite uses its own subset.
#![allow(dead_code)]

use std::time::Duration;

use kemu::{Caller, Handle, Kernel, KernelConfig, NativeDriver, Thumbprint};
use ksys::ntdef::*;
use proto::session::*;
use wsktls_client::driver::{CallError, Driver, PendingHandshake, PendingTransfer};
use wsktls_client::kemu::KemuDevice;

pub const DEVICE_PATH: &str = r"\\.\WskTls";

/// SHA-256 of the server certificate of the last `boot` in this process.
pub static SERVER_DIGEST: std::sync::Mutex<[u8; 32]> = std::sync::Mutex::new([0; 32]);

pub fn boot() -> (Kernel, Thumbprint) {
    boot_with_parameters(&[])
}

/// As [`boot`], with REG_DWORDs set in the service's Parameters key before the driver loads.
pub fn boot_with_parameters(parameters: &[(&str, u32)]) -> (Kernel, Thumbprint) {
    boot_with(parameters, |_| {})
}

/// As [`boot_with_parameters`], with the kernel's configuration adjusted first (faults).
pub fn boot_with(
    parameters: &[(&str, u32)],
    adjust: impl FnOnce(&mut KernelConfig),
) -> (Kernel, Thumbprint) {
    let mut config = KernelConfig::from_env();
    adjust(&mut config);
    let kernel = testkit::boot(config);
    for &(name, value) in parameters {
        kernel.set_service_parameter("wsktls", name, value);
    }
    let pki = testkit::Pki::install(&kernel, "wsktls test CA", &["localhost"], "wsktls-tests");
    *SERVER_DIGEST.lock().unwrap() = pki.digest;
    let thumbprint = pki.thumbprint;
    match std::env::var_os("WSKTLS_IMAGE") {
        Some(image) => kernel
            .load_image("wsktls", std::path::Path::new(&image))
            .unwrap(),
        None => kernel
            .load(NativeDriver {
                service_name: "wsktls",
                entry: wsktls::FxDriverEntry,
                imports: ksys::imports::IMPORT_DIRECTORY,
            })
            .unwrap(),
    }
    (kernel, thumbprint)
}

pub fn open(kernel: &Kernel) -> Handle {
    kernel.open(DEVICE_PATH, Caller::Administrator).unwrap()
}

/// The typed client over a handle of `kernel`: the IOCTL client the `wsktls` command uses,
/// for every call a suite makes well-formed (malformed requests go through `kernel.ioctl`).
pub fn client(kernel: &Kernel, h: Handle) -> Driver<'_> {
    Driver::new(Box::new(KemuDevice::new(kernel, h)))
}

pub fn listen(kernel: &Kernel, h: Handle, thumbprint: Thumbprint, alpn: &[u8]) -> ListenResponse {
    let request = ListenRequest {
        endpoint: Endpoint::loopback_v4(0),
        thumbprint: thumbprint.0,
        versions: VersionRange::ALL,
        require_client_certificate: false,
        alpn,
    };
    client(kernel, h)
        .listen(&request)
        .unwrap_or_else(|e| panic!("LISTEN: {e}"))
}

/// How long a suite waits for a request it expects to finish.
pub const WAIT: Duration = Duration::from_secs(30);

/// The NTSTATUS a typed call's request completed with (STATUS_SUCCESS for Ok); a failure of
/// the device layer or the wire fails the test.
pub fn status_of<T>(result: Result<T, CallError>) -> NTSTATUS {
    match result {
        Ok(_) => STATUS_SUCCESS,
        Err(e) => NTSTATUS(e.status().unwrap_or_else(|| panic!("no completion: {e}"))),
    }
}

/// The NTSTATUS an ACCEPT or CONNECT request completed with: STATUS_SUCCESS whenever it
/// carried a ConnectionInfo back, whether the handshake inside succeeded or failed.
pub fn request_status(handshake: Result<ConnectionInfo, CallError>) -> NTSTATUS {
    match handshake {
        Err(CallError::Handshake { .. }) => STATUS_SUCCESS,
        other => status_of(other),
    }
}

pub fn connect_request(port: u16, sni: &[u8], alpn: &[u8], validation: Validation) -> Vec<u8> {
    let request = loopback_connect(port, sni, alpn, validation);
    let mut buf = vec![0u8; ConnectRequest::FIXED + 9 + sni.len() + alpn.len()];
    let n = request.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn loopback_connect<'a>(
    port: u16,
    sni: &'a [u8],
    alpn: &'a [u8],
    validation: Validation,
) -> ConnectRequest<'a> {
    ConnectRequest {
        endpoint: Endpoint::loopback_v4(port),
        host: b"localhost",
        sni,
        alpn,
        versions: VersionRange::ALL,
        validation,
        client_certificate: None,
        keep_peer_certificates: false,
        full_handshake: false,
    }
}

/// CONNECT to 127.0.0.1:`port`, checking the server's chain against the machine's roots.
pub fn connect_async(
    kernel: &Kernel,
    h: Handle,
    port: u16,
    sni: &[u8],
    alpn: &[u8],
) -> PendingHandshake {
    connect_validating(kernel, h, port, sni, alpn, Validation::SystemRoots)
}

/// CONNECT to 127.0.0.1:`port` with this validation.
pub fn connect_validating(
    kernel: &Kernel,
    h: Handle,
    port: u16,
    sni: &[u8],
    alpn: &[u8],
    validation: Validation,
) -> PendingHandshake {
    client(kernel, h)
        .connect(&loopback_connect(port, sni, alpn, validation))
        .unwrap_or_else(|e| panic!("CONNECT: {e}"))
}

pub fn accept_async(kernel: &Kernel, h: Handle, id: u64) -> PendingHandshake {
    client(kernel, h)
        .accept(id)
        .unwrap_or_else(|e| panic!("ACCEPT: {e}"))
}

/// The handshake's connection, which must have succeeded.
pub fn info(handshake: PendingHandshake) -> ConnectionInfo {
    handshake
        .wait(WAIT)
        .unwrap_or_else(|e| panic!("handshake: {e}"))
}

/// SEND of one piece (1 to MAX_SEND bytes): the status it completed with.
pub fn send(kernel: &Kernel, h: Handle, id: u64, data: &[u8]) -> NTSTATUS {
    status_of(
        client(kernel, h)
            .send_async(id, data)
            .and_then(|sent| sent.wait(WAIT)),
    )
}

pub fn recv_async(kernel: &Kernel, h: Handle, id: u64, max: u32) -> PendingTransfer {
    client(kernel, h)
        .recv_async(id, max)
        .unwrap_or_else(|e| panic!("RECV: {e}"))
}

/// RECV until `len` bytes arrived.
pub fn recv_exact(kernel: &Kernel, h: Handle, id: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < len {
        let got = client(kernel, h)
            .recv(id, 65536, WAIT)
            .unwrap_or_else(|e| panic!("RECV: {e}"));
        assert!(
            !got.is_empty(),
            "end of stream after {} of {len}",
            out.len()
        );
        out.extend_from_slice(&got);
    }
    out
}

/// SHUTDOWN: the status it completed with.
pub fn shutdown(kernel: &Kernel, h: Handle, id: u64) -> NTSTATUS {
    status_of(client(kernel, h).shutdown(id))
}

/// CLOSE of a listener or connection: the status it completed with.
pub fn close_object(kernel: &Kernel, h: Handle, id: u64) -> NTSTATUS {
    status_of(client(kernel, h).close(id))
}

pub fn stats(kernel: &Kernel, h: Handle) -> Stats {
    client(kernel, h)
        .stats()
        .unwrap_or_else(|e| panic!("STATS: {e}"))
}

/// A booted kernel with one connection between two handles: (kernel, server handle, client
/// handle, the client's connection, the server's connection).
pub fn connected_pair() -> (Kernel, Handle, Handle, ConnectionInfo, ConnectionInfo) {
    let (kernel, thumbprint) = boot();
    let a = open(&kernel);
    let b = open(&kernel);
    let listener = listen(&kernel, a, thumbprint, b"");
    let accept = accept_async(&kernel, a, listener.id);
    let client = info(connect_async(&kernel, b, listener.port, b"localhost", b""));
    let server = info(accept);
    (kernel, a, b, client, server)
}

pub fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(salt))
        .collect()
}
