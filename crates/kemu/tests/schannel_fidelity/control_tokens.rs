//! ApplyControlToken: SCHANNEL_SHUTDOWN and SCHANNEL_ALERT.

use super::*;

/// ApplyControlToken(token) on an established context.
fn apply(tls: &mut Tls, token: &mut [u32]) -> SECURITY_STATUS {
    let mut buffer = SecBuffer::new(
        SECBUFFER_TOKEN,
        token.as_mut_ptr() as *mut std::ffi::c_void,
        (token.len() * 4) as u32,
    );
    let mut desc = SecBufferDesc {
        ulVersion: SECBUFFER_VERSION,
        cBuffers: 1,
        pBuffers: &mut buffer,
    };
    let mut context = tls.context.unwrap();
    // SAFETY: a live context and a descriptor that outlives the call.
    unsafe { ksys::imports::ApplyControlToken(&mut context, &mut desc) }
}

/// SCHANNEL_SHUTDOWN then ISC gives the close_notify the peer reads as SEC_I_CONTEXT_EXPIRED;
/// after a record failure, SCHANNEL_ALERT then ASC gives the failure's fatal alert, which the
/// peer reads as an error. An alert with nothing failed is refused.
#[test]
fn control_tokens_produce_close_notify_and_the_failure_alert() {
    in_kernel("control tokens", move |thumbprint| {
        for disabled in [SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT] {
            let (server_cred, client_cred) = credentials(thumbprint, disabled);
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            let mut server = Tls::server(server_cred, &[], 0);
            Tls::pump_handshake(&mut client, &mut server).unwrap();
            // Tickets first (TLS 1.3), so the client's context is idle.
            answer_tickets(&mut client);
            assert_eq!(
                apply(&mut client, &mut [SCHANNEL_ALERT, TLS1_ALERT_FATAL, 10]),
                SEC_E_UNSUPPORTED_FUNCTION,
                "nothing failed: kemu has no such alert to write"
            );
            assert_eq!(apply(&mut client, &mut [SCHANNEL_SHUTDOWN]), SEC_E_OK);
            let close = client.step(&[]);
            assert_eq!(close.status, SEC_E_OK);
            server.incoming = close.output;
            assert_eq!(server.decrypt_buffered(), Ok(None), "close_notify");

            // A record with a broken tag: the server fails, then sends its alert.
            let mut c = Tls::client(client_cred, "localhost", &[], 0);
            let mut s = Tls::server(server_cred, &[], 0);
            Tls::pump_handshake(&mut c, &mut s).unwrap();
            let mut record = c.encrypt(b"tampered").unwrap();
            let last = record.len() - 1;
            record[last] ^= 1;
            s.incoming = record;
            assert_eq!(s.decrypt_buffered(), Err(SEC_E_MESSAGE_ALTERED));
            assert_eq!(
                apply(&mut s, &mut [SCHANNEL_ALERT, TLS1_ALERT_FATAL, 20]),
                SEC_E_OK
            );
            let alert = s.step(&[]);
            assert_eq!(alert.status, SEC_E_OK);
            assert!(!alert.output.is_empty() && alert.output.len() < 64);
            let mut sink = Vec::new();
            loop {
                match c.decrypt_buffered() {
                    Err(SEC_I_RENEGOTIATE) => c.answer_post_handshake(&mut sink).unwrap(),
                    Err(SEC_E_INCOMPLETE_MESSAGE) | Ok(_) if c.incoming.is_empty() => break,
                    Ok(_) => {}
                    other => panic!("{other:?}"),
                }
            }
            c.incoming = alert.output;
            let got = c.decrypt_buffered();
            assert!(
                matches!(got, Err(e) if e.is_error()),
                "the peer reads the alert as a failure: {got:?}"
            );
            for t in [&mut client, &mut server, &mut c, &mut s] {
                t.delete();
            }
            free_credential(client_cred);
            free_credential(server_cred);
        }
    });
}
