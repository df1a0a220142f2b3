//! The WIDEN pack's environment knobs (the README lists them): sizes in MiB, and switches that
//! turn a mechanism off for side-by-side comparisons.

/// `name` as a size in MiB, returned in bytes; `None` when unset or not a whole number.
pub fn mebibytes(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse::<usize>().ok().map(|mb| mb << 20)
}

/// Whether `name` is set to `0` (anything else, or unset, leaves the mechanism on).
pub fn switched_off(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "0")
}
