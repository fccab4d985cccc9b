//! The wire contract: IOCTL codes, encodings, and parsing that never panics.

use proto::*;

#[test]
fn ioctl_codes_follow_ctl_code_and_the_kernel_definition() {
    // The reference sheet's worked example, through both implementations.
    assert_eq!(
        ctl_code(
            0x22,
            0x800,
            METHOD_BUFFERED,
            FILE_READ_ACCESS | FILE_WRITE_ACCESS
        ),
        0x0022_E000
    );
    assert_eq!(ksys::io::ctl_code(0x22, 0x800, 0, 3), 0x0022_E000);
    assert_eq!(IOCTL_WSKTLS_GET_VERSION, 0x8A57_6000);
    assert_eq!(
        IOCTL_WSKTLS_GET_VERSION,
        ksys::io::ctl_code(
            FILE_DEVICE_WSKTLS,
            0x800,
            ksys::io::METHOD_BUFFERED,
            ksys::io::FILE_READ_ACCESS
        )
    );
    // Vendor device type, vendor function range, buffered method, explicit read access.
    const { assert!(IOCTL_WSKTLS_GET_VERSION >> 16 >= 0x8000) };
    const { assert!((IOCTL_WSKTLS_GET_VERSION >> 2) & 0xFFF >= 0x800) };
    assert_eq!(IOCTL_WSKTLS_GET_VERSION & 3, METHOD_BUFFERED);
    assert_eq!((IOCTL_WSKTLS_GET_VERSION >> 14) & 3, FILE_READ_ACCESS);
}

fn sample() -> GetVersionResponse {
    GetVersionResponse {
        wire_version: WIRE_VERSION,
        driver: DriverVersion {
            major: 1,
            minor: 2,
            patch: 3,
        },
        kmdf_major: 1,
        kmdf_minor: 15,
    }
}

#[test]
fn get_version_round_trips_with_a_fixed_layout() {
    let bytes = sample().encode();
    assert_eq!(bytes.len(), GetVersionResponse::SIZE);
    assert_eq!(&bytes[0..4], b"WKTL");
    assert_eq!(
        u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize,
        GetVersionResponse::SIZE
    );
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        WIRE_VERSION
    );
    assert_eq!(&bytes[12..18], &[1, 0, 2, 0, 3, 0]);
    assert_eq!(&bytes[20..24], &[1, 0, 15, 0]);
    assert_eq!(GetVersionResponse::decode(&bytes), Ok(sample()));
    assert!(sample().is_compatible());
}

#[test]
fn get_version_rejects_each_kind_of_bad_input_precisely() {
    let good = sample().encode();
    assert_eq!(
        GetVersionResponse::decode(&good[..10]),
        Err(WireError::TooShort {
            needed: GetVersionResponse::SIZE,
            got: 10
        })
    );
    let mut long = good.to_vec();
    long.push(0);
    assert_eq!(
        GetVersionResponse::decode(&long),
        Err(WireError::TooLong {
            allowed: GetVersionResponse::SIZE,
            got: long.len()
        })
    );
    let mut magic = good;
    magic[0] ^= 1;
    assert!(matches!(
        GetVersionResponse::decode(&magic),
        Err(WireError::BadMagic(_))
    ));
    let mut size = good;
    size[4] = 99;
    assert_eq!(
        GetVersionResponse::decode(&size),
        Err(WireError::BadSize {
            expected: GetVersionResponse::SIZE as u32,
            declared: 99
        })
    );
    let mut reserved = good;
    reserved[18] = 1;
    assert_eq!(
        GetVersionResponse::decode(&reserved),
        Err(WireError::InvalidField("reserved"))
    );
    let mut version = good;
    version[8..12].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(
        GetVersionResponse::decode(&version),
        Err(WireError::InvalidField("wire_version"))
    );

    assert_eq!(validate_get_version_input(0), Ok(()));
    assert_eq!(
        validate_get_version_input(1),
        Err(WireError::TooLong { allowed: 0, got: 1 })
    );
}

#[test]
fn errors_map_to_the_documented_ntstatus() {
    assert_eq!(
        WireError::TooShort { needed: 1, got: 0 }.status(),
        ksys::ntdef::STATUS_BUFFER_TOO_SMALL.0
    );
    assert_eq!(
        WireError::TooLong { allowed: 0, got: 1 }.status(),
        ksys::ntdef::STATUS_INVALID_BUFFER_SIZE.0
    );
    assert_eq!(
        WireError::BadMagic(0).status(),
        ksys::ntdef::STATUS_REVISION_MISMATCH.0
    );
    assert_eq!(
        WireError::BadSize {
            expected: 1,
            declared: 2
        }
        .status(),
        ksys::ntdef::STATUS_REVISION_MISMATCH.0
    );
    assert_eq!(
        WireError::InvalidField("x").status(),
        ksys::ntdef::STATUS_INVALID_PARAMETER.0
    );
    assert_eq!(
        status::INVALID_DEVICE_REQUEST,
        ksys::ntdef::STATUS_INVALID_DEVICE_REQUEST.0
    );
}

/// Deterministic xorshift: the same byte slices on every run.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn decoding_never_panics_on_any_bytes() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let good = sample().encode();
    let mut accepted = 0;
    for round in 0..200_000 {
        let len = (xorshift(&mut state) % 48) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
        if round % 2 == 0 && len >= good.len() {
            // Mostly-valid inputs reach the deeper checks.
            bytes[..good.len()].copy_from_slice(&good);
            let flip = (xorshift(&mut state) as usize) % good.len();
            bytes[flip] ^= xorshift(&mut state) as u8;
            bytes.truncate(good.len());
        }
        if let Ok(parsed) = GetVersionResponse::decode(&bytes) {
            // Anything accepted re-encodes to exactly the bytes it came from.
            assert_eq!(parsed.encode().as_slice(), bytes.as_slice());
            accepted += 1;
        }
    }
    assert!(
        accepted > 0,
        "the mutated-valid inputs should sometimes still be valid"
    );
}
