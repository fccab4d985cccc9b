//! The caller's SecBufferDesc arrays: read at call time, written back at completion.

use ksys::sspi::*;

/// One input buffer as copied at call time.
#[derive(Debug, Clone)]
pub(crate) struct InputBuffer {
    pub kind: u32,
    pub data: Vec<u8>,
}

/// Copies every input buffer (type and bytes) — Schannel marshals them at call time.
///
/// # Safety
/// `desc` must be NULL or a valid SecBufferDesc whose buffers hold `cbBuffer` readable bytes.
pub(crate) unsafe fn copy_inputs(desc: *const SecBufferDesc) -> Vec<InputBuffer> {
    // SAFETY: per the contract.
    unsafe { buffers(desc) }
        .iter()
        .map(|b| InputBuffer {
            kind: b.kind(),
            data: if b.pvBuffer.is_null() || b.cbBuffer == 0 {
                Vec::new()
            } else {
                // SAFETY: per the contract.
                unsafe { std::slice::from_raw_parts(b.pvBuffer as *const u8, b.cbBuffer as usize) }
                    .to_vec()
            },
        })
        .collect()
}

/// The buffers of a descriptor.
///
/// # Safety
/// `desc` must be NULL or a valid SecBufferDesc.
pub(crate) unsafe fn buffers<'a>(desc: *const SecBufferDesc) -> &'a mut [SecBuffer] {
    if desc.is_null() {
        return &mut [];
    }
    // SAFETY: per the contract.
    let d = unsafe { &*desc };
    if d.pBuffers.is_null() || d.cBuffers == 0 {
        return &mut [];
    }
    // SAFETY: cBuffers entries at pBuffers.
    unsafe { std::slice::from_raw_parts_mut(d.pBuffers, d.cBuffers as usize) }
}

/// The number of buffers of a descriptor (0 for NULL).
///
/// # Safety
/// As [`buffers`].
pub(crate) unsafe fn count(desc: *const SecBufferDesc) -> u32 {
    if desc.is_null() {
        return 0;
    }
    // SAFETY: per the contract.
    unsafe { (*desc).cBuffers }
}

/// Parses a SEC_APPLICATION_PROTOCOLS blob into ALPN protocol ids.
pub(crate) fn alpn_ids(blob: &[u8]) -> Vec<Vec<u8>> {
    let mut ids = Vec::new();
    if blob.len() < 4 {
        return ids;
    }
    let total = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
    let mut lists = &blob[4..(4 + total).min(blob.len())];
    while lists.len() >= 6 {
        let ext = i32::from_le_bytes([lists[0], lists[1], lists[2], lists[3]]);
        let size = u16::from_le_bytes([lists[4], lists[5]]) as usize;
        let list = &lists[6..(6 + size).min(lists.len())];
        if ext == 2 {
            let mut wire = list;
            while let Some((&len, rest)) = wire.split_first() {
                let len = usize::from(len);
                if len == 0 || rest.len() < len {
                    break;
                }
                ids.push(rest[..len].to_vec());
                wire = &rest[len..];
            }
        }
        lists = &lists[(6 + size).min(lists.len())..];
    }
    ids
}
