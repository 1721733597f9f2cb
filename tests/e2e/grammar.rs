//! The rules for untrusted ids, written out independently of the implementation, for the
//! property tests here and the fuzz targets in `fuzz/` (which include this file by path).

/// A forwarded request id: 1–128 bytes of `[A-Za-z0-9._:+/=@-]`.
pub fn id_is_valid(bytes: &[u8]) -> bool {
    (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"._:+/=@-".contains(b))
}

/// A W3C `traceparent`: two lowercase hex digits of version (not `ff`), `-`, 32 and 16
/// lowercase hex digits of ids not all zeros, 2 of flags, `-` between; version `00` ends
/// there (55 bytes), a higher version may go on after a `-`.
pub fn traceparent_is_valid(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let non_zero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    let layout = v.len() >= 55
        && hex(&v[..2])
        && &v[..2] != b"ff"
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && non_zero(&v[3..35])
        && hex(&v[36..52])
        && non_zero(&v[36..52])
        && hex(&v[53..55]);
    layout && (v.len() == 55 || (&v[..2] != b"00" && v[55] == b'-'))
}
