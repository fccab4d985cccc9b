//! ktls's SHA-256 against the FIPS 180-4 examples and longer inputs around the padding edges.

use ktls::sha256::sha256;

fn hex(d: [u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn known_digests() {
    let cases: [(&[u8], &str); 4] = [
        (
            b"",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            b"abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        ),
        (
            &[b'a'; 1_000_000],
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(hex(sha256(input)), expected, "{} bytes", input.len());
    }
    let bytes: Vec<u8> = (0..768).map(|i| (i % 256) as u8).collect();
    assert_eq!(
        hex(sha256(&bytes)),
        "f3a25aa93aa2fbba28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe363"
    );
}

#[test]
fn every_length_around_the_block_edges_differs() {
    // 55, 56, 63, 64, 65 bytes take different padding paths; all digests must differ.
    let digests: Vec<[u8; 32]> = (50..70).map(|n| sha256(&vec![0x5a; n])).collect();
    for (i, a) in digests.iter().enumerate() {
        for b in &digests[i + 1..] {
            assert_ne!(a, b);
        }
    }
}
