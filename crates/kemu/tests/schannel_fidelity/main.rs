//! kemu's Schannel against what Windows Schannel does where rustls behaves otherwise:
//! post-handshake messages through SEC_I_RENEGOTIATE, input buffering across records (and no
//! panic on any input), output buffers on failure, control tokens, certificate rules.

use std::io::Write;

use kemu::testing::sspi::{CredentialSpec, Step, Tls, acquire, free_credential};
use kemu::{CallbackSchedule, FaultPlan, Kernel, KernelConfig, TestCa, Thumbprint, Validity};
use ksys::schannel::*;
use ksys::sspi::*;

mod certificates;
mod control_tokens;
mod input;
mod negotiation;
mod output_buffers;
mod post_handshake;

fn boot() -> Kernel {
    kemu::exports::bind_native(ksys::imports::IMPORT_DIRECTORY);
    Kernel::boot(KernelConfig {
        faults: FaultPlan {
            callbacks: CallbackSchedule::Random,
            ..FaultPlan::default()
        },
        ..KernelConfig::from_env()
    })
}

/// A trusted CA and a "localhost" server certificate in MY.
fn server_identity(kernel: &Kernel) -> Thumbprint {
    let ca = TestCa::generate("kemu fidelity CA").unwrap();
    let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
    let store = kernel.cert_store();
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    store
        .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
        .unwrap()
}

/// Boots a kernel with a trusted "localhost" server certificate, runs `body` on a kernel thread
/// with its thumbprint, and requires a clean shutdown (nothing leaked).
fn in_kernel(name: &str, body: impl FnOnce(Thumbprint) + Send + 'static) {
    let kernel = boot();
    let thumbprint = server_identity(&kernel);
    kernel.run(name, move || body(thumbprint)).unwrap();
    kernel.shutdown().unwrap();
}

/// Reads what the client has buffered (TLS 1.3 tickets after the handshake), answering each
/// post-handshake message through ISC.
fn answer_tickets(client: &mut Tls) {
    let mut sink = Vec::new();
    while !client.incoming.is_empty() {
        match client.decrypt_buffered() {
            Err(SEC_I_RENEGOTIATE) => client.answer_post_handshake(&mut sink).unwrap(),
            Ok(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

fn credentials(thumbprint: Thumbprint, client_disabled: u32) -> (SecHandle, SecHandle) {
    let server = acquire(&CredentialSpec {
        inbound: true,
        thumbprint: Some(thumbprint),
        ..Default::default()
    })
    .unwrap();
    let client = acquire(&CredentialSpec {
        disabled_protocols: client_disabled,
        ..Default::default()
    })
    .unwrap();
    (server, client)
}

/// Re-frames every handshake record (type 22) of `wire` into records of at most `size` bytes
/// of payload: the same messages, spanning many records.
fn fragment_handshake(wire: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        let record = &wire[at..at + 5 + len];
        if record[0] == 22 {
            for piece in record[5..].chunks(size) {
                out.extend_from_slice(&record[..3]);
                out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
                out.extend_from_slice(piece);
            }
        } else {
            out.extend_from_slice(record);
        }
        at += 5 + len;
    }
    out.extend_from_slice(&wire[at..]);
    out
}

/// Drives one side as a driver does: bytes arrive in `chunks`; each arrival calls ISC/ASC on
/// everything not yet consumed. Returns the last status and the outputs.
fn feed(tls: &mut Tls, chunks: &[&[u8]]) -> (SECURITY_STATUS, Vec<u8>) {
    let mut pending = Vec::new();
    let mut output = Vec::new();
    let mut status = SEC_E_INCOMPLETE_MESSAGE;
    for chunk in chunks {
        if chunk.is_empty() {
            // Nothing arrived: a driver does not call again.
            continue;
        }
        pending.extend_from_slice(chunk);
        loop {
            let Step {
                status: s,
                output: o,
                extra,
                ..
            } = tls.step(&pending);
            output.extend_from_slice(&o);
            status = s;
            match s {
                SEC_I_CONTINUE_NEEDED => {
                    pending = pending[pending.len() - extra.min(pending.len())..].to_vec();
                    if pending.is_empty() {
                        break;
                    }
                }
                SEC_E_OK => {
                    tls.incoming = pending[pending.len() - extra.min(pending.len())..].to_vec();
                    return (s, output);
                }
                _ => break,
            }
        }
        if status.is_error() && status != SEC_E_INCOMPLETE_MESSAGE {
            return (status, output);
        }
    }
    (status, output)
}
