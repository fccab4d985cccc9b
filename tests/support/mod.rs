//! What the driver-in-kemu suites share: booting a kernel with the driver (native, or the image
//! `WSKTLS_IMAGE` names) and a server certificate, and one call per IOCTL.

// Each suite uses its own subset.
#![allow(dead_code)]

use std::time::Duration;

use kemu::{Caller, Handle, Kernel, KernelConfig, NativeDriver, PendingIo, Thumbprint};
use ksys::ntdef::*;
use proto::session::*;
use wsktls_client::driver::Driver;
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

pub fn connect_request(port: u16, sni: &[u8], alpn: &[u8], validation: Validation) -> Vec<u8> {
    let request = ConnectRequest {
        endpoint: Endpoint::loopback_v4(port),
        host: b"localhost",
        sni,
        alpn,
        versions: VersionRange::ALL,
        validation,
        client_certificate: None,
        keep_peer_certificates: false,
    };
    let mut buf = vec![0u8; ConnectRequest::FIXED + 9 + sni.len() + alpn.len()];
    let n = request.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

pub fn connect_async(kernel: &Kernel, h: Handle, port: u16, sni: &[u8], alpn: &[u8]) -> PendingIo {
    let input = connect_request(port, sni, alpn, Validation::SystemRoots);
    kernel
        .ioctl_async(h, IOCTL_WSKTLS_CONNECT, &input, ConnectionInfo::SIZE)
        .unwrap()
}

pub fn accept_async(kernel: &Kernel, h: Handle, id: u64) -> PendingIo {
    kernel
        .ioctl_async(
            h,
            IOCTL_WSKTLS_ACCEPT,
            &IdRequest { id }.encode(),
            ConnectionInfo::SIZE,
        )
        .unwrap()
}

pub fn info(io: PendingIo) -> ConnectionInfo {
    let r = io
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("completes");
    assert_eq!(r.status, STATUS_SUCCESS, "{:#x}", r.status);
    ConnectionInfo::decode(&r.output[..r.information]).unwrap()
}

/// SEND: the header as input, the payload as the (direct) output buffer.
pub fn send(kernel: &Kernel, h: Handle, id: u64, data: &[u8]) -> NTSTATUS {
    kernel
        .ioctl_async_with(
            h,
            IOCTL_WSKTLS_SEND,
            &SendRequest { id }.encode(),
            data.to_vec(),
        )
        .unwrap()
        .wait()
        .unwrap()
        .status
}

pub fn recv_async(kernel: &Kernel, h: Handle, id: u64, max: u32) -> PendingIo {
    kernel
        .ioctl_async(
            h,
            IOCTL_WSKTLS_RECV,
            &RecvRequest { id, max }.encode(),
            max as usize,
        )
        .unwrap()
}

/// RECV until `len` bytes arrived.
pub fn recv_exact(kernel: &Kernel, h: Handle, id: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < len {
        let r = recv_async(kernel, h, id, 65536)
            .wait_timeout(Duration::from_secs(30))
            .unwrap()
            .expect("RECV completes");
        assert_eq!(r.status, STATUS_SUCCESS, "RECV: {:#x}", r.status);
        assert!(
            r.information > 0,
            "end of stream after {} of {len}",
            out.len()
        );
        out.extend_from_slice(&r.output[..r.information]);
    }
    out
}

pub fn id_call(kernel: &Kernel, h: Handle, code: u32, id: u64) -> NTSTATUS {
    kernel
        .ioctl(h, code, &IdRequest { id }.encode(), 0)
        .unwrap()
        .status
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
