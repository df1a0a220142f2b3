//! The content-addressed subtree cache (D19, DESIGN.md "Content-addressed recipe cache").
//!
//! One process-wide LRU, bounded by bytes, shared by every Exit node. Keys are the per-key
//! content hashes of merge subtrees ([`super::exit::Analysis::key_hash`]): what the subtree
//! reads (file identities, strengths), the key's effective t_factor and block multipliers, the
//! key name and the device. Values are that subtree's merged weights for that key (fp32, CPU),
//! so a change anywhere recomputes only the subtrees whose hash changed and what sits above
//! them, and a block slider recomputes only the keys of that block.

use std::sync::{LazyLock, Mutex};

use lru::LruCache;
use tch::Tensor;

pub struct SubtreeCache {
    inner: Mutex<Inner>,
}

struct Inner {
    map: LruCache<[u8; 32], Tensor>,
    bytes: usize,
    limit: usize,
    hits: u64,
    misses: u64,
}

/// Cache statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub limit: usize,
    pub hits: u64,
    pub misses: u64,
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes() + 64
}

/// Default bound: `COMFYRS_WIDEN_CACHE_MB`, else a quarter of the available memory (at most
/// 16 GiB).
fn default_limit() -> usize {
    if let Some(mb) = std::env::var("COMFYRS_WIDEN_CACHE_MB").ok().and_then(|v| v.parse::<usize>().ok()) {
        return mb << 20;
    }
    (super::exit::mem_available().unwrap_or(8 << 30) / 4).min(16 << 30)
}

/// The process-wide cache.
pub static CACHE: LazyLock<SubtreeCache> = LazyLock::new(|| SubtreeCache::new(default_limit()));

impl SubtreeCache {
    pub fn new(limit: usize) -> Self {
        SubtreeCache { inner: Mutex::new(Inner { map: LruCache::unbounded(), bytes: 0, limit, hits: 0, misses: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A shallow handle on the cached tensor (never modified in place by anyone).
    pub fn get(&self, key: &[u8; 32]) -> Option<Tensor> {
        let mut g = self.lock();
        let r = g.map.get(key).map(Tensor::shallow_clone);
        if r.is_some() {
            g.hits += 1;
        } else {
            g.misses += 1;
        }
        r
    }

    pub fn insert(&self, key: [u8; 32], value: Tensor) {
        let size = tensor_bytes(&value);
        let mut g = self.lock();
        if size > g.limit {
            return;
        }
        if let Some(old) = g.map.put(key, value) {
            g.bytes -= tensor_bytes(&old);
        }
        g.bytes += size;
        while g.bytes > g.limit {
            match g.map.pop_lru() {
                Some((_, t)) => g.bytes -= tensor_bytes(&t),
                None => break,
            }
        }
    }

    pub fn clear(&self) {
        let mut g = self.lock();
        g.map.clear();
        g.bytes = 0;
    }

    pub fn set_limit(&self, limit: usize) {
        let mut g = self.lock();
        g.limit = limit;
        while g.bytes > g.limit {
            match g.map.pop_lru() {
                Some((_, t)) => g.bytes -= tensor_bytes(&t),
                None => break,
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let g = self.lock();
        CacheStats { entries: g.map.len(), bytes: g.bytes, limit: g.limit, hits: g.hits, misses: g.misses }
    }
}
