//! What the output TOKEN says on failure and when it is too small.

use super::*;

/// A server whose certificate does not match its key fails the handshake; the output TOKEN then
/// says what was written (nothing, or an alert), never the caller's buffer size — a driver that
/// sent cbBuffer bytes sent 32 KiB of zeros.
#[test]
fn output_buffers_say_what_was_written_on_failure() {
    let kernel = boot();
    let ca = TestCa::generate("mismatch CA").unwrap();
    let a = ca.issue(&["localhost"], Validity::Current).unwrap();
    let b = ca.issue(&["localhost"], Validity::Current).unwrap();
    let store = kernel.cert_store();
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    let thumbprint = store
        .import_pem(a.chain_pem.as_bytes(), b.key_pem.as_bytes())
        .unwrap();
    kernel
        .run("mismatch", move || {
            let (server_cred, client_cred) = credentials(thumbprint, SP_PROT_TLS1_2_CLIENT);
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            let hello = client.step(&[]).output;
            let mut server = Tls::server(server_cred, &[], 0);
            let step = server.step(&hello);
            assert!(step.status.is_error(), "{:#x}", step.status);
            assert!(
                step.output.len() < 64,
                "output TOKEN cbBuffer {} after {:#x}",
                step.output.len(),
                step.status
            );
            client.delete();
            server.delete();
            free_credential(client_cred);
            free_credential(server_cred);
        })
        .unwrap();
    kernel.shutdown().unwrap();
}

/// An output TOKEN too small for the flight: the call fails with the size needed in cbBuffer and
/// consumes nothing; the same call with a buffer that big produces the flight and the handshake
/// goes on (what MsQuic does on SEC_E_BUFFER_TOO_SMALL; the status is W13's question).
#[test]
fn a_too_small_output_buffer_says_the_size_and_the_call_can_be_repeated() {
    in_kernel("too small", move |thumbprint| {
        let too_small = SECURITY_STATUS(ksys::ntdef::STATUS_BUFFER_TOO_SMALL.0);
        for disabled in [SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT] {
            let (server_cred, client_cred) = credentials(thumbprint, disabled);
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            let mut server = Tls::server(server_cred, &[], 0);
            let small = client.step_sized(&[], 16);
            assert_eq!(small.status, too_small);
            assert!(small.needed > 16);
            let hello = client.step_sized(&[], small.needed);
            assert_eq!(hello.status, SEC_I_CONTINUE_NEEDED);
            assert_eq!(hello.output.len(), small.needed);
            let small = server.step_sized(&hello.output, 100);
            assert_eq!(small.status, too_small);
            let flight = server.step_sized(&hello.output, small.needed);
            assert!(flight.status.is_success(), "{:#x}", flight.status);
            assert_eq!(flight.output.len(), small.needed);
            // The rest of the handshake as usual.
            let answer = client.step(&flight.output);
            assert!(answer.status.is_success(), "{:#x}", answer.status);
            if !answer.output.is_empty() {
                let last = server.step(&answer.output);
                assert!(last.status.is_success(), "{:#x}", last.status);
                if answer.status != SEC_E_OK {
                    assert_eq!(client.step(&last.output).status, SEC_E_OK);
                }
            }
            client.delete();
            server.delete();
            free_credential(client_cred);
            free_credential(server_cred);
        }
    });
}
