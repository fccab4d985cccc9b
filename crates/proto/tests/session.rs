//! The session IOCTL contract: every request and response round-trips, and every malformed input
//! — each truncation, bad magic or version, out-of-range field, malformed ALPN or name — is a
//! precise error, never a panic.

use proto::WireError;
use proto::session::*;

const THUMB: [u8; 20] = [0xAB; 20];

fn listen() -> (Vec<u8>, usize) {
    let req = ListenRequest {
        endpoint: Endpoint::loopback_v4(8443),
        thumbprint: THUMB,
        versions: VersionRange::ALL,
        require_client_certificate: true,
        alpn: b"\x02h2\x08http/1.1",
    };
    let mut out = vec![0u8; 512];
    let n = req.encode(&mut out).unwrap();
    out.truncate(n);
    (out, n)
}

fn connect(validation: Validation) -> Vec<u8> {
    let req = ConnectRequest {
        endpoint: Endpoint {
            v6: false,
            ip: [0; 16],
            port: 443,
        },
        host: b"example.test",
        sni: b"",
        alpn: b"\x08http/1.1",
        versions: VersionRange {
            min: TlsVersion::Tls13,
            max: TlsVersion::Tls13,
        },
        validation,
        client_certificate: None,
        keep_peer_certificates: false,
        full_handshake: false,
    };
    let mut out = vec![0u8; 1024];
    let n = req.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

/// Every strict prefix of a valid request fails with an error (and never panics).
fn every_prefix_fails(bytes: &[u8], fails: impl Fn(&[u8]) -> bool) {
    for cut in 0..bytes.len() {
        assert!(fails(&bytes[..cut]), "a {cut}-byte prefix decoded");
    }
}

#[test]
fn listen_round_trips_and_rejects_bad_fields() {
    let (bytes, n) = listen();
    assert_eq!(n, ListenRequest::FIXED + 12);
    let req = ListenRequest::decode(&bytes).unwrap();
    assert_eq!(
        (
            req.endpoint.port,
            req.thumbprint,
            req.require_client_certificate,
            req.alpn
        ),
        (8443, THUMB, true, &b"\x02h2\x08http/1.1"[..])
    );
    every_prefix_fails(&bytes, |b| ListenRequest::decode(b).is_err());
    let mutate = |at: usize, value: u8| {
        let mut b = bytes.clone();
        b[at] = value;
        ListenRequest::decode(&b).map(|_| ())
    };
    assert!(matches!(mutate(0, b'X'), Err(WireError::BadMagic(_))));
    assert!(
        matches!(mutate(4, 9), Err(WireError::BadSize { .. })),
        "another wire version"
    );
    assert_eq!(mutate(8, 5), Err(WireError::InvalidField("family")));
    assert_eq!(
        mutate(12 + 4, 1),
        Err(WireError::InvalidField("ip")),
        "IPv4 with bytes past the 4th"
    );
    assert_eq!(mutate(48, 1), Err(WireError::InvalidField("store")));
    assert_eq!(mutate(49, 2), Err(WireError::InvalidField("flags")));
    assert_eq!(
        mutate(50, 0x05),
        Err(WireError::InvalidField("min_version"))
    );
    assert_eq!(
        mutate(ListenRequest::FIXED, 0),
        Err(WireError::InvalidField("alpn")),
        "zero-length ALPN id"
    );
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        ListenRequest::decode(&long),
        Err(WireError::TooLong { .. })
    ));
    let mut zero = bytes.clone();
    zero[28..48].fill(0);
    assert_eq!(
        ListenRequest::decode(&zero).map(|_| ()),
        Err(WireError::InvalidField("thumbprint"))
    );
    // TLS 1.3 minimum with a TLS 1.2 maximum.
    let mut inverted = bytes.clone();
    inverted[50..52].copy_from_slice(&0x0304u16.to_le_bytes());
    inverted[52..54].copy_from_slice(&0x0303u16.to_le_bytes());
    assert_eq!(
        ListenRequest::decode(&inverted).map(|_| ()),
        Err(WireError::InvalidField("min_version"))
    );
}

#[test]
fn connect_round_trips_and_rejects_bad_fields() {
    for validation in [
        Validation::SystemRoots,
        Validation::Pinned([7; 32]),
        Validation::Insecure,
    ] {
        let bytes = connect(validation);
        let req = ConnectRequest::decode(&bytes).unwrap();
        assert_eq!(
            (req.host, req.validation, req.endpoint.port),
            (&b"example.test"[..], validation, 443)
        );
        every_prefix_fails(&bytes, |b| ConnectRequest::decode(b).is_err());
    }
    let bytes = connect(Validation::SystemRoots);
    let mutate = |at: usize, value: u8| {
        let mut b = bytes.clone();
        b[at] = value;
        ConnectRequest::decode(&b).map(|_| ())
    };
    assert_eq!(mutate(32, 3), Err(WireError::InvalidField("validation")));
    assert_eq!(
        mutate(33, 1),
        Err(WireError::InvalidField("pin")),
        "a pin without pinning"
    );
    assert_eq!(
        mutate(32, 1),
        Err(WireError::InvalidField("validation")),
        "pinning without a pin"
    );
    assert_eq!(
        mutate(ConnectRequest::FIXED, b' '),
        Err(WireError::InvalidField("host"))
    );
    // Flags (after the pin and the three lengths) and the client certificate's thumbprint.
    let flags_at = ConnectRequest::FIXED - 21;
    assert_eq!(mutate(flags_at, 8), Err(WireError::InvalidField("flags")));
    let mut full = bytes.clone();
    full[flags_at] = 4;
    let decoded = ConnectRequest::decode(&full).unwrap();
    assert!(decoded.full_handshake && !decoded.keep_peer_certificates);
    assert!(!ConnectRequest::decode(&bytes).unwrap().full_handshake);
    let mut keep = bytes.clone();
    keep[flags_at] = 2;
    assert!(
        ConnectRequest::decode(&keep)
            .unwrap()
            .keep_peer_certificates
    );
    assert_eq!(
        mutate(flags_at + 1, 9),
        Err(WireError::InvalidField("client certificate")),
        "a thumbprint without the flag"
    );
    let mut with_certificate = bytes.clone();
    with_certificate[flags_at] = 1;
    with_certificate[flags_at + 1..flags_at + 21].fill(0xAB);
    assert_eq!(
        ConnectRequest::decode(&with_certificate)
            .unwrap()
            .client_certificate,
        Some([0xAB; 20])
    );
    let mut no_port = bytes.clone();
    no_port[10..12].fill(0);
    assert_eq!(
        ConnectRequest::decode(&no_port).map(|_| ()),
        Err(WireError::InvalidField("port"))
    );
    let nameless = ConnectRequest {
        endpoint: Endpoint {
            v6: false,
            ip: [0; 16],
            port: 443,
        },
        host: b"",
        sni: b"",
        alpn: b"",
        versions: VersionRange::ALL,
        validation: Validation::SystemRoots,
        client_certificate: None,
        keep_peer_certificates: false,
        full_handshake: false,
    };
    let mut out = vec![0u8; 256];
    let n = nameless.encode(&mut out).unwrap();
    assert_eq!(
        ConnectRequest::decode(&out[..n]).map(|_| ()),
        Err(WireError::InvalidField("host")),
        "neither an address nor a host"
    );
}

#[test]
fn id_send_and_recv_requests() {
    let id = IdRequest { id: 42 }.encode();
    assert_eq!(IdRequest::decode(&id), Ok(IdRequest { id: 42 }));
    every_prefix_fails(&id, |b| IdRequest::decode(b).is_err());
    assert_eq!(
        IdRequest::decode(&IdRequest { id: 0 }.encode()),
        Err(WireError::InvalidField("id"))
    );

    let send = SendRequest { id: 7 }.encode();
    assert_eq!(SendRequest::decode(&send), Ok(SendRequest { id: 7 }));
    every_prefix_fails(&send, |b| SendRequest::decode(b).is_err());
    let mut longer = send.to_vec();
    longer.push(0);
    assert!(matches!(
        SendRequest::decode(&longer),
        Err(WireError::TooLong { .. })
    ));
    assert_eq!(
        SendRequest::check_payload(0),
        Err(WireError::InvalidField("payload"))
    );
    assert_eq!(SendRequest::check_payload(MAX_SEND), Ok(()));
    assert!(matches!(
        SendRequest::check_payload(MAX_SEND + 1),
        Err(WireError::TooLong { .. })
    ));

    let recv = RecvRequest { id: 9, max: 4096 }.encode();
    assert_eq!(
        RecvRequest::decode(&recv),
        Ok(RecvRequest { id: 9, max: 4096 })
    );
    every_prefix_fails(&recv, |b| RecvRequest::decode(b).is_err());
    assert_eq!(
        RecvRequest::decode(&RecvRequest { id: 9, max: 0 }.encode()),
        Err(WireError::InvalidField("max"))
    );
    assert_eq!(
        RecvRequest::decode(
            &RecvRequest {
                id: 9,
                max: MAX_RECV as u32 + 1
            }
            .encode()
        ),
        Err(WireError::InvalidField("max"))
    );
}

#[test]
fn responses_round_trip() {
    let mut alpn = [0u8; 255];
    alpn[..2].copy_from_slice(b"h2");
    let info = ConnectionInfo {
        status: 0,
        sspi_status: 0,
        id: 5,
        version: Some(TlsVersion::Tls13),
        cipher_suite: 0x1301,
        peer_certificate: Some([3; 32]),
        alpn_len: 2,
        alpn,
        resumed: true,
    };
    let bytes = info.encode();
    let back = ConnectionInfo::decode(&bytes).unwrap();
    assert_eq!(back, info);
    assert_eq!(back.alpn(), b"h2");
    every_prefix_fails(&bytes, |b| ConnectionInfo::decode(b).is_err());
    // The flags word (after magic, size, two statuses, id, version, suite and two bytes):
    // bit 0 is `resumed`, every other bit is refused.
    const FLAGS_AT: usize = 8 + 4 + 4 + 8 + 2 + 2 + 1 + 1;
    assert_eq!(
        u16::from_le_bytes([bytes[FLAGS_AT], bytes[FLAGS_AT + 1]]),
        1
    );
    let mut unknown = bytes;
    unknown[FLAGS_AT] |= 2;
    assert_eq!(
        ConnectionInfo::decode(&unknown),
        Err(WireError::InvalidField("flags"))
    );
    let failed = ConnectionInfo {
        status: 0xC000_0022u32 as i32,
        sspi_status: 0x8009_0325u32 as i32,
        id: 0,
        version: None,
        cipher_suite: 0,
        peer_certificate: None,
        alpn_len: 0,
        alpn: [0; 255],
        resumed: false,
    };
    assert_eq!(
        ConnectionInfo::decode(&failed.encode()),
        Ok(failed),
        "a failure carries both statuses"
    );
    let broken = ConnectionInfo {
        status: 0,
        id: 0,
        ..failed
    };
    assert_eq!(
        ConnectionInfo::decode(&broken.encode()),
        Err(WireError::InvalidField("id"))
    );

    let id = IdResponse { id: 11 }.encode();
    assert_eq!(IdResponse::decode(&id), Ok(IdResponse { id: 11 }));
    every_prefix_fails(&id, |b| IdResponse::decode(b).is_err());

    let stats = Stats {
        connections_open: 3,
        handshakes_ok: 9,
        max_connections: 500,
        handshake_timeout_ms: 10_000,
        requests_examined: 77,
        ..Stats::default()
    };
    let bytes = stats.encode();
    assert_eq!(Stats::decode(&bytes), Ok(stats));
    every_prefix_fails(&bytes, |b| Stats::decode(b).is_err());
}

#[test]
fn codes_are_distinct_buffered_or_direct_and_require_read_write() {
    let codes = [
        IOCTL_WSKTLS_LISTEN,
        IOCTL_WSKTLS_ACCEPT,
        IOCTL_WSKTLS_CONNECT,
        IOCTL_WSKTLS_SEND,
        IOCTL_WSKTLS_RECV,
        IOCTL_WSKTLS_SHUTDOWN,
        IOCTL_WSKTLS_CLOSE,
        IOCTL_WSKTLS_STATS,
        proto::IOCTL_WSKTLS_GET_VERSION,
    ];
    for (i, a) in codes.iter().enumerate() {
        let method = match *a {
            IOCTL_WSKTLS_SEND => proto::METHOD_IN_DIRECT,
            IOCTL_WSKTLS_RECV => proto::METHOD_OUT_DIRECT,
            _ => proto::METHOD_BUFFERED,
        };
        assert_eq!(a & 3, method, "{a:#x}");
        assert_eq!(a >> 16, proto::FILE_DEVICE_WSKTLS);
        for b in &codes[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert_eq!(
        (IOCTL_WSKTLS_SEND >> 14) & 3,
        3,
        "SEND needs read and write access"
    );
}
