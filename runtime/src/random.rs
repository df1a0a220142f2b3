//! Fresh random numbers for salts and seeds, without state of our own: each call takes a new
//! `RandomState` (std keys every one differently, from the OS's randomness and a per-thread
//! counter of its own).

use std::hash::{BuildHasher, Hasher};

/// A number no earlier call in this process returned (with overwhelming probability).
pub fn fresh_u64() -> u64 {
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn calls_differ() {
        let a: std::collections::HashSet<u64> = (0..64).map(|_| super::fresh_u64()).collect();
        assert_eq!(a.len(), 64);
    }
}
