//! ETags of objects that have no store revision (pools, projects, the server, a metadata
//! file): a tag of their contents, stable across daemon restarts.

/// FNV-1a 64 of `bytes`, as 16 hex digits.
pub fn of_bytes(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_differ_with_contents_and_are_stable() {
        assert_eq!(super::of_bytes(b""), "cbf29ce484222325");
        assert_ne!(super::of_bytes(b"a"), super::of_bytes(b"b"));
        assert_eq!(super::of_bytes(b"abc"), super::of_bytes(b"abc"));
    }
}
