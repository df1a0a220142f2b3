//! What the HTTP side and the executor thread share besides the database: which prompt runs,
//! the interrupt, the pause, pending `/free` requests, and the wake-up for new work.

use std::sync::{Condvar, Mutex};

use comfyrs_runtime::interrupt::Interrupt;

#[derive(Default)]
struct Inner {
    /// The prompt being run and the node it is on (for a socket that connects mid-run).
    running: Option<(String, Option<String>)>,
    /// Work may be waiting (set by every enqueue and resume; the worker clears it).
    dirty: bool,
    paused: bool,
    stopping: bool,
    unload_models: bool,
    free_memory: bool,
}

pub struct Control {
    inner: Mutex<Inner>,
    wake: Condvar,
    /// The executor's interrupt flag.
    pub interrupt: Interrupt,
}

/// What the worker must do before its next prompt.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct FreeRequest {
    pub unload_models: bool,
    pub free_memory: bool,
}

impl Control {
    pub fn new(interrupt: Interrupt, paused: bool) -> Self {
        Control { inner: Mutex::new(Inner { paused, dirty: true, ..Inner::default() }), wake: Condvar::new(), interrupt }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New work may be queued.
    pub fn notify(&self) {
        self.lock().dirty = true;
        self.wake.notify_all();
    }

    /// Blocks until there may be work and the queue is not paused; false when stopping.
    pub fn wait_for_work(&self) -> bool {
        let mut g = self.lock();
        loop {
            if g.stopping {
                return false;
            }
            if g.dirty && !g.paused {
                g.dirty = false;
                return true;
            }
            g = self.wake.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn set_paused(&self, paused: bool) {
        let mut g = self.lock();
        g.paused = paused;
        g.dirty = true;
        self.wake.notify_all();
    }

    pub fn paused(&self) -> bool {
        self.lock().paused
    }

    /// Stops the worker: the running prompt is interrupted and goes back to the queue.
    pub fn stop(&self) {
        let mut g = self.lock();
        g.stopping = true;
        self.interrupt.set();
        self.wake.notify_all();
    }

    pub fn stopping(&self) -> bool {
        self.lock().stopping
    }

    pub fn set_running(&self, prompt_id: Option<String>) {
        self.lock().running = prompt_id.map(|p| (p, None));
    }

    pub fn set_running_node(&self, node: &str) {
        if let Some((_, n)) = &mut self.lock().running {
            *n = Some(node.to_string());
        }
    }

    /// The running prompt and its current node.
    pub fn running(&self) -> Option<(String, Option<String>)> {
        self.lock().running.clone()
    }

    /// Interrupts the running prompt; with an id, only if that one is running. Whether it did.
    pub fn interrupt(&self, prompt_id: Option<&str>) -> bool {
        let g = self.lock();
        match (&g.running, prompt_id) {
            (Some(_), None) => {
                self.interrupt.set();
                true
            }
            (Some((running, _)), Some(id)) if running == id => {
                self.interrupt.set();
                true
            }
            // As ComfyUI: a global interrupt while idle sets the flag, which the next prompt
            // clears at its start.
            (None, None) => {
                self.interrupt.set();
                false
            }
            _ => false,
        }
    }

    /// The worker may go straight on to the next prompt: not stopping, not paused, and no
    /// `/free` waiting to be applied first.
    pub fn may_continue(&self) -> bool {
        let g = self.lock();
        !(g.stopping || g.paused || g.unload_models || g.free_memory)
    }

    pub fn request_free(&self, unload_models: bool, free_memory: bool) {
        let mut g = self.lock();
        g.unload_models |= unload_models;
        g.free_memory |= free_memory;
    }

    pub fn take_free(&self) -> FreeRequest {
        let mut g = self.lock();
        FreeRequest { unload_models: std::mem::take(&mut g.unload_models), free_memory: std::mem::take(&mut g.free_memory) }
    }
}
