//! Small formatting helpers shared by the subcommands.

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `65536` → `"64 KiB"`, `1048576` → `"1 MiB"`, other values in bytes.
pub fn human_size(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(human_size(65536), "64 KiB");
        assert_eq!(human_size(2 << 20), "2 MiB");
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(4097), "4097 bytes");
    }
}
