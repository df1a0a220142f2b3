//! Human byte sizes for settings: `512MB`, `4GiB`, `1073741824`.

/// What a size setting accepts, for error messages.
pub const SIZE_FORMS: &str = "a size such as 4GiB, 512MiB, 512MB or 1073741824 (bytes)";

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Parses a byte count with an optional unit (decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let not_a_size = || format!("'{s}' is not a size");
    if num.is_empty() {
        return Err(not_a_size());
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => KIB,
        "m" | "mb" => 1_000_000,
        "mib" => MIB,
        "g" | "gb" => 1_000_000_000,
        "gib" => GIB,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => TIB,
        _ => return Err(format!("unknown size unit '{}' in '{s}' (units: B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)", unit.trim())),
    };
    // Whole numbers are exact; a fraction (`1.5GiB`) is rounded down to a byte.
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| format!("'{s}' is more bytes than this machine can count"));
    }
    let n: f64 = num.parse().map_err(|_| not_a_size())?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("'{s}' is more bytes than this machine can count"));
    }
    Ok(bytes as u64)
}

/// The shortest exact spelling of a byte count that `parse_size` reads back: `4GiB`, `512MiB`,
/// or the plain number when no binary unit divides it.
pub fn format_size(bytes: u64) -> String {
    // The units are powers of two: one divides `bytes` when `bytes` has at least its zero bits.
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit && bytes.trailing_zeros() >= unit.trailing_zeros() {
            return format!("{}{name}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("512MB").unwrap(), 512_000_000);
        assert_eq!(parse_size("1073741824").unwrap(), 1 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size(" 2 gib ").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4G").unwrap(), 4_000_000_000);
        assert_eq!(parse_size("0").unwrap(), 0);
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        for bad in ["lots", "", "-1", "4XB", "GiB", "1e3", "1.2.3MiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(parse_size("lots").unwrap_err(), "'lots' is not a size");
        let e = parse_size("4 parsecs").unwrap_err();
        assert!(e.contains("unknown size unit 'parsecs'"), "{e}");
        assert!(parse_size("99999999999TiB").unwrap_err().contains("more bytes"));
        assert!(parse_size("18446744073709551616").is_err(), "u64::MAX + 1");
    }

    #[test]
    fn formats_back_exactly() {
        assert_eq!(format_size(4 << 30), "4GiB");
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        for b in [4u64 << 30, 512 << 20, 1000, 3 << 40, 12345] {
            assert_eq!(parse_size(&format_size(b)).unwrap(), b);
        }
    }
}
