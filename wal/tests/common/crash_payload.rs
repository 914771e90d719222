//! The records the crash child appends and the crash test checks: one
//! definition, included by both (the child is a binary, the test an
//! integration test, so they share source rather than a crate).

/// The record for `key`: the key itself, then `len - 8` bytes of xorshift
/// noise seeded by it.
pub fn payload(key: u64, len: usize) -> Vec<u8> {
    let mut out = key.to_le_bytes().to_vec();
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}
