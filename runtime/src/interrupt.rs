//! The cooperative interrupt flag (Ctrl-C, `POST /interrupt`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Checked between nodes and by long nodes between steps.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
