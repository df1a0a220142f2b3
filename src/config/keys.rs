//! Every setting's name in a comfyrs.toml and its environment variable (the flags are in
//! args.rs). The loader reads the environment from this table only, and `comfyrs config` lists
//! settings in its order.

pub struct Key {
    /// Dotted path in a comfyrs.toml (`memory.host` is `host` in `[memory]`).
    pub key: &'static str,
    pub env: Option<&'static str>,
}

const fn key(key: &'static str, env: Option<&'static str>) -> Key {
    Key { key, env }
}

pub const KEYS: &[Key] = &[
    key("models_dir", Some("COMFYRS_MODELS_DIR")),
    key("extra_model_paths", Some("COMFYRS_EXTRA_MODEL_PATHS")),
    key("comfyui", Some("COMFYUI_PATH")),
    key("custom_nodes", None),
    key("python", Some("COMFYRS_PYTHON")),
    key("device", Some("COMFYRS_DEVICE")),
    key("memory.host", Some("COMFYRS_HOST_MEMORY")),
    key("memory.device", Some("COMFYRS_DEVICE_MEMORY")),
    key("memory.device_cache", Some("COMFYRS_DEVICE_CACHE_MEMORY")),
    key("cache.mode", Some("COMFYRS_CACHE_MODE")),
    key("widen.chunk_budget", Some("COMFYRS_WIDEN_CHUNK_BUDGET")),
    key("widen.host_ram", Some("COMFYRS_WIDEN_HOST_RAM")),
    key("widen.cache", Some("COMFYRS_WIDEN_CACHE")),
    key("widen.device_cache", Some("COMFYRS_WIDEN_DEVICE_CACHE")),
    key("widen.subtree_products", Some("COMFYRS_WIDEN_SUBTREE_PRODUCTS")),
    key("widen.base_copies", Some("COMFYRS_WIDEN_BASE_COPIES")),
    key("widen.page_locked_bases", Some("COMFYRS_WIDEN_PAGE_LOCKED_BASES")),
    key("widen.stats_cache", Some("COMFYRS_WIDEN_STATS_CACHE")),
    key("widen.factor_cache", Some("COMFYRS_WIDEN_FACTOR_CACHE")),
    key("widen.pinned", Some("COMFYRS_WIDEN_PINNED")),
    key("widen.events", Some("COMFYRS_WIDEN_EVENTS")),
    key("widen.copy_stream", Some("COMFYRS_WIDEN_COPY_STREAM")),
    key("widen.results_on_device", Some("COMFYRS_WIDEN_RESULTS_ON_DEVICE")),
    key("server.listen", Some("COMFYRS_LISTEN")),
    key("server.port", Some("COMFYRS_PORT")),
    key("server.state_dir", Some("COMFYRS_STATE_DIR")),
    key("server.output_dir", None),
    key("server.input_dir", None),
    key("server.temp_dir", None),
    key("server.front_end_root", Some("COMFYRS_FRONT_END_ROOT")),
    key("server.auth_token", Some("COMFYRS_AUTH_TOKEN")),
    key("server.max_upload", Some("COMFYRS_MAX_UPLOAD")),
    key("server.max_history", Some("COMFYRS_MAX_HISTORY")),
    key("broker.url", Some("COMFYRS_BROKER")),
    key("broker.namespace", Some("COMFYRS_BROKER_NAMESPACE")),
    key("broker.server", Some("COMFYRS_SERVER")),
    key("broker.affinity_wait", Some("COMFYRS_AFFINITY_WAIT")),
];

/// The variable naming the comfyrs.toml to read (`--config` wins over it).
pub const CONFIG_ENV: &str = "COMFYRS_CONFIG";

/// A variable of earlier versions that took a whole number of MiB; still read, below the new one.
pub struct LegacyMib {
    pub var: &'static str,
    pub key: &'static str,
    pub new_var: &'static str,
}

const fn legacy(var: &'static str, key: &'static str, new_var: &'static str) -> LegacyMib {
    LegacyMib { var, key, new_var }
}

pub const LEGACY_MIB: &[LegacyMib] = &[
    legacy("COMFYRS_WIDEN_BUDGET_MB", "widen.chunk_budget", "COMFYRS_WIDEN_CHUNK_BUDGET"),
    legacy("COMFYRS_WIDEN_HOST_RAM_MB", "widen.host_ram", "COMFYRS_WIDEN_HOST_RAM"),
    legacy("COMFYRS_WIDEN_CACHE_MB", "widen.cache", "COMFYRS_WIDEN_CACHE"),
    legacy("COMFYRS_WIDEN_DEVICE_CACHE_MB", "widen.device_cache", "COMFYRS_WIDEN_DEVICE_CACHE"),
    legacy("COMFYRS_WIDEN_STATS_CACHE_MB", "widen.stats_cache", "COMFYRS_WIDEN_STATS_CACHE"),
    legacy("COMFYRS_WIDEN_FACTOR_CACHE_MB", "widen.factor_cache", "COMFYRS_WIDEN_FACTOR_CACHE"),
];
