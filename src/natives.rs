//! The registry this binary runs with: native nodes first (they win), then Python's.

use comfyrs_runtime::Registry;

pub fn registry() -> Registry {
    let mut reg = Registry::new();
    comfyrs_nodes::core::register(&mut reg);
    reg
}
