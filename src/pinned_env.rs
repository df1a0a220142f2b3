//! libtorch's page-locked host memory, registered by several threads (docs/widen.md, "Device
//! start-up"). Pinning pages is what a merge's first results wait for: on an H200 host 2 GiB
//! took 0.74 s one page at a time and 0.2 s with 16 threads.

/// The variable libtorch's CUDA allocators read their settings from, once, when first used.
const VAR: &str = "PYTORCH_CUDA_ALLOC_CONF";

/// Asks libtorch to page-lock host memory by registering it with `cores` threads (a power of
/// two, at most 16), unless the variable already says how to pin. Runs first in `main`.
pub fn prepare() {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if let Some(value) = with_registration(std::env::var(VAR).ok().as_deref(), cores) {
        // Sound only while no other thread reads the environment: this runs at the top of
        // `main`, before logging, tokio, Python or libtorch start any thread.
        std::env::set_var(VAR, value);
    }
}

/// The variable's new value, or `None` to leave it as the user set it.
fn with_registration(existing: Option<&str>, cores: usize) -> Option<String> {
    if existing.is_some_and(|e| e.contains("pinned_")) {
        return None;
    }
    // libtorch takes a power of two; more than 16 registering threads gained nothing measured.
    let threads = 1usize << cores.clamp(1, 16).ilog2();
    let ours = format!("pinned_use_cuda_host_register:True,pinned_num_register_threads:{threads}");
    Some(match existing.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) => format!("{e},{ours}"),
        None => ours,
    })
}

#[cfg(test)]
mod tests {
    use super::with_registration;

    #[test]
    fn registration_threads_are_a_power_of_two_and_the_users_settings_stay() {
        assert_eq!(with_registration(None, 2).as_deref(), Some("pinned_use_cuda_host_register:True,pinned_num_register_threads:2"));
        assert_eq!(with_registration(None, 12).as_deref(), Some("pinned_use_cuda_host_register:True,pinned_num_register_threads:8"));
        assert_eq!(with_registration(None, 128).as_deref(), Some("pinned_use_cuda_host_register:True,pinned_num_register_threads:16"));
        assert_eq!(with_registration(Some(""), 1).as_deref(), Some("pinned_use_cuda_host_register:True,pinned_num_register_threads:1"));
        assert_eq!(
            with_registration(Some("expandable_segments:True"), 16).as_deref(),
            Some("expandable_segments:True,pinned_use_cuda_host_register:True,pinned_num_register_threads:16")
        );
        assert_eq!(with_registration(Some("pinned_use_cuda_host_register:False"), 16), None);
    }
}
