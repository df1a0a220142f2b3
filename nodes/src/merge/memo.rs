//! Small memos (owned by the merge engine) of values derived from content (parsed LoRA files, LoRA sets, a
//! recipe's touched keys and its grouping): a slider change asks for the same ones again.
//! Bounded by count: when full a memo starts over (its entries are cheap to rebuild next to a
//! merge, and only a few are live at a time).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

pub struct Memo<K, V> {
    entries: Mutex<Option<HashMap<K, V>>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    pub const fn new(capacity: usize) -> Self {
        Memo { entries: Mutex::new(None), capacity }
    }

    /// The value for `key`, made by `make` (outside the lock) when it is not there.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        match self.get_or_try_insert_with(key, || Ok::<V, std::convert::Infallible>(make())) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// [`Memo::get_or_insert_with`] for a `make` that may fail (nothing is stored then).
    pub fn get_or_try_insert_with<E>(&self, key: K, make: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        if let Some(v) = self.lock().as_ref().and_then(|m| m.get(&key)) {
            return Ok(v.clone());
        }
        let v = make()?;
        let mut guard = self.lock();
        let map = guard.get_or_insert_with(HashMap::new);
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(key, v.clone());
        Ok(v)
    }

    pub fn clear(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<K, V>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_once_per_key_keeps_failures_out_and_starts_over_when_full() {
        let memo: Memo<u32, u32> = Memo::new(2);
        let mut calls = 0;
        assert_eq!(memo.get_or_insert_with(1, || { calls += 1; 10 }), 10);
        assert_eq!(memo.get_or_insert_with(1, || { calls += 1; 11 }), 10);
        assert_eq!(calls, 1);
        assert_eq!(memo.get_or_try_insert_with(2, || Err::<u32, &str>("no")), Err("no"));
        assert_eq!(memo.get_or_insert_with(2, || 20), 20, "a failure stores nothing");
        // Full (two entries): the third starts over, so key 1 is made again.
        assert_eq!(memo.get_or_insert_with(3, || 30), 30);
        assert_eq!(memo.get_or_insert_with(1, || 12), 12);
    }
}
