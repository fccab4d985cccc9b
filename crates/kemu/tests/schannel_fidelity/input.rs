//! Handshake input cut anywhere and hostile bytes: Schannel buffers pieces itself and answers
//! every call with a status.

use super::*;

/// A ClientHello (TLS 1.3 and 1.2) and a TLS 1.2 server flight re-framed into small records and
/// delivered cut at every point: Schannel buffers the pieces itself, so each handshake
/// completes; kemu never hands rustls less than it has seen (the 0x1E bugcheck of hostile runs).
#[test]
fn handshake_messages_spanning_records_are_accepted_at_every_cut() {
    in_kernel("fragments", move |thumbprint| {
        for (disabled, sizes) in [
            (SP_PROT_TLS1_2_CLIENT, [3usize, 64]),
            (SP_PROT_TLS1_3_CLIENT, [5, 200]),
        ] {
            let (server_cred, client_cred) = credentials(thumbprint, disabled);
            for size in sizes {
                // The client's first flight, fragmented, against a fresh server each cut.
                let mut probe = Tls::client(client_cred, "localhost", &[], 0);
                let hello = fragment_handshake(&probe.step(&[]).output, size);
                probe.delete();
                let step = if size < 10 { 7 } else { 1 };
                for cut in (0..=hello.len()).step_by(step) {
                    let mut server = Tls::server(server_cred, &[], 0);
                    let (status, output) = feed(&mut server, &[&hello[..cut], &hello[cut..]]);
                    assert_eq!(
                        status, SEC_I_CONTINUE_NEEDED,
                        "size {size} cut {cut}: {status:#x}"
                    );
                    assert!(!output.is_empty());
                    server.delete();
                }
            }
            if disabled == SP_PROT_TLS1_3_CLIENT {
                // TLS 1.2: the server's flight (certificate included) is plaintext.
                for cut in (0..2400).step_by(29) {
                    let mut client = Tls::client(client_cred, "localhost", &[], 0);
                    let mut server = Tls::server(server_cred, &[], 0);
                    let hello = client.step(&[]).output;
                    let flight = fragment_handshake(&server.step(&hello).output, 11);
                    let cut = cut.min(flight.len());
                    let (status, output) = feed(&mut client, &[&flight[..cut], &flight[cut..]]);
                    assert_eq!(status, SEC_I_CONTINUE_NEEDED, "cut {cut}: {status:#x}");
                    assert!(!output.is_empty());
                    client.delete();
                    server.delete();
                }
            }
            free_credential(client_cred);
            free_credential(server_cred);
        }
    });
}

/// Hostile byte streams: real flights with bytes flipped, cut anywhere, and garbage records
/// after the handshake. Every call returns a status; the kernel never stops.
#[test]
fn hostile_input_gets_a_status_never_a_bugcheck() {
    in_kernel("hostile", move |thumbprint| {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for disabled in [SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT] {
            let (server_cred, client_cred) = credentials(thumbprint, disabled);
            let mut probe = Tls::client(client_cred, "localhost", &[], 0);
            let hello = probe.step(&[]).output;
            probe.delete();
            for round in 0..150 {
                let mut wire = fragment_handshake(&hello, 1 + round % 40);
                for _ in 0..1 + rng.usize(..4) {
                    let at = rng.usize(..wire.len());
                    wire[at] ^= 1 << rng.u8(..8);
                }
                let cut = rng.usize(..=wire.len());
                let mut server = Tls::server(server_cred, &[], 0);
                let _ = feed(&mut server, &[&wire[..cut], &wire[cut..]]);
                server.delete();
            }
            // After the handshake: garbage, truncated and replayed records.
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            let mut server = Tls::server(server_cred, &[], 0);
            Tls::pump_handshake(&mut client, &mut server).unwrap();
            let record = server.encrypt(b"a record to break").unwrap();
            for round in 0..200 {
                let mut bytes = record.clone();
                match round % 4 {
                    0 => {
                        let at = rng.usize(..bytes.len());
                        bytes[at] ^= 0x40;
                    }
                    1 => bytes.truncate(rng.usize(..bytes.len())),
                    2 => bytes = (0..rng.usize(1..64)).map(|_| rng.u8(..)).collect(),
                    _ => {
                        let len = rng.usize(..300) as u16;
                        bytes = vec![23, 3, 3];
                        bytes.extend_from_slice(&len.to_be_bytes());
                        bytes.extend((0..len).map(|_| rng.u8(..)));
                    }
                }
                let mut c = Tls::client(client_cred, "localhost", &[], 0);
                let mut s = Tls::server(server_cred, &[], 0);
                Tls::pump_handshake(&mut c, &mut s).unwrap();
                c.incoming.clear();
                c.incoming.extend_from_slice(&bytes);
                for _ in 0..4 {
                    let r = c.decrypt_buffered();
                    if r.is_err() || c.incoming.is_empty() {
                        break;
                    }
                }
                c.delete();
                s.delete();
            }
            client.delete();
            server.delete();
            free_credential(client_cred);
            free_credential(server_cred);
        }
    });
}
