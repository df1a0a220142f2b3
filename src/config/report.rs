//! The effective configuration as `comfyrs config` prints it: one entry per setting, with its
//! value and where it came from.

use std::path::PathBuf;

use serde_json::{json, Map, Value as Json};

use super::cache::mode_name;
use super::keys::KEYS;
use super::Config;
use crate::size::format_size;

/// One setting's effective value. `value` is what `--json` prints (sizes in bytes, `null` when
/// unset); `text` the same in TOML (sizes with a unit), None when unset.
pub struct Entry {
    pub key: &'static str,
    pub value: Json,
    pub text: Option<String>,
    pub source: String,
    /// What an `auto` means on this machine, where that is known at start.
    pub resolved: Option<String>,
}

fn quoted(s: &str) -> String {
    // A JSON string is a valid TOML basic string for every escape serde_json writes.
    Json::from(s).to_string()
}

fn path(p: &Option<PathBuf>) -> (Json, Option<String>) {
    match p {
        Some(p) => {
            let s = p.to_string_lossy();
            (json!(s), Some(quoted(&s)))
        }
        None => (Json::Null, None),
    }
}

fn word(w: impl ToString) -> (Json, Option<String>) {
    let w = w.to_string();
    (json!(w), Some(quoted(&w)))
}

fn size(bytes: u64) -> (Json, Option<String>) {
    // A whole number of bytes is a TOML integer; with a unit it is a string.
    let text = format_size(bytes);
    let text = if text.bytes().all(|b| b.is_ascii_digit()) { text } else { quoted(&text) };
    (json!(bytes), Some(text))
}

fn limit(bytes: Option<u64>) -> (Json, Option<String>) {
    bytes.map_or_else(|| word("auto"), size)
}

fn switch(on: bool) -> (Json, Option<String>) {
    (json!(on), Some(on.to_string()))
}

/// A switch that `auto` leaves to comfyrs (None).
fn auto_switch(on: Option<bool>) -> (Json, Option<String>) {
    on.map_or_else(|| word("auto"), switch)
}

fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

impl Config {
    /// Every setting in the order of the settings table.
    pub fn entries(&self) -> Vec<Entry> {
        KEYS.iter()
            .map(|k| {
                let (value, text) = match k.key {
                    "models_dir" => path(&Some(self.models_dir.clone())),
                    "extra_model_paths" => path(&self.extra_model_paths),
                    "comfyui" => path(&self.comfyui),
                    "custom_nodes" => {
                        let all: Vec<String> = self.custom_nodes.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                        let text = format!("[{}]", all.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", "));
                        (json!(all), Some(text))
                    }
                    "python" => word(self.python),
                    "device" => word(self.device),
                    "memory.host" => limit(self.memory.host),
                    "memory.device" => limit(self.memory.device),
                    "memory.device_cache" => limit(self.memory.device_cache),
                    "cache.mode" => word(mode_name(self.cache.mode)),
                    "widen.chunk_budget" => limit(self.widen.chunk_budget),
                    "widen.host_ram" => limit(self.widen.host_ram),
                    "widen.cache" => limit(self.widen.cache),
                    "widen.device_cache" => limit(self.widen.device_cache),
                    "widen.subtree_products" => auto_switch(self.widen.subtree_products),
                    "widen.base_copies" => auto_switch(self.widen.base_copies),
                    "widen.page_locked_bases" => limit(self.widen.page_locked_bases),
                    "widen.stats_cache" => size(self.widen.stats_cache),
                    "widen.factor_cache" => size(self.widen.factor_cache),
                    "widen.pinned" => switch(self.widen.pinned),
                    "widen.events" => switch(self.widen.events),
                    "widen.copy_stream" => switch(self.widen.copy_stream),
                    "widen.results_on_device" => switch(self.widen.results_on_device),
                    "server.listen" => word(self.server.listen),
                    "server.port" => (json!(self.server.port), Some(self.server.port.to_string())),
                    "server.state_dir" => path(&self.server.state_dir),
                    "server.output_dir" => path(&self.server.output_dir),
                    "server.input_dir" => path(&self.server.input_dir),
                    "server.temp_dir" => path(&self.server.temp_dir),
                    "server.front_end_root" => path(&self.server.front_end_root),
                    // Never printed: `comfyrs config` output ends up in bug reports.
                    "server.auth_token" => match &self.server.auth_token {
                        Some(_) => (json!("(set)"), Some(quoted("(set)"))),
                        None => (Json::Null, None),
                    },
                    "server.max_upload" => size(self.server.max_upload),
                    "server.max_history" => (json!(self.server.max_history), Some(self.server.max_history.to_string())),
                    // A password in the URL is never printed.
                    "broker.url" => match self.broker.url_for_display() {
                        Some(u) => (json!(u), Some(quoted(&u))),
                        None => (Json::Null, None),
                    },
                    "broker.namespace" => (json!(self.broker.namespace), Some(quoted(&self.broker.namespace))),
                    "broker.server" => match &self.broker.server {
                        Some(u) => (json!(u), Some(quoted(u))),
                        None => (Json::Null, None),
                    },
                    "broker.affinity_wait" => (json!(self.broker.affinity_wait), Some(self.broker.affinity_wait.to_string())),
                    other => unreachable!("setting {other} is in the table but not in the report"),
                };
                let resolved = (k.key == "device").then(|| device_name(self.device.resolve()));
                Entry { key: k.key, value, text, source: self.source(k.key).to_string(), resolved }
            })
            .collect()
    }

    /// TOML lines `key = value  # from SOURCE`; an unset setting is a comment line.
    pub fn to_toml_lines(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .map(|e| {
                let resolved = e.resolved.map(|r| format!("; resolves to {r}")).unwrap_or_default();
                match e.text {
                    Some(t) => format!("{} = {t}  # from {}{resolved}", e.key, e.source),
                    None => format!("# {} is not set  # from {}", e.key, e.source),
                }
            })
            .collect()
    }

    /// `{key: {value, source}}`.
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        for e in self.entries() {
            let mut entry = json!({ "value": e.value, "source": e.source });
            if let Some(r) = e.resolved {
                entry["resolved"] = json!(r);
            }
            m.insert(e.key.to_string(), entry);
        }
        Json::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_reported() {
        let c = Config::default();
        let j = c.to_json();
        assert_eq!(j.as_object().unwrap().len(), KEYS.len());
        assert_eq!(j["memory.host"]["value"], "auto");
        assert_eq!(j["widen.stats_cache"]["value"], 1u64 << 30);
        assert_eq!(j["extra_model_paths"]["value"], Json::Null);
        let lines = c.to_toml_lines();
        assert!(lines.contains(&"widen.factor_cache = \"2GiB\"  # from default".to_string()), "{lines:?}");
        assert!(lines.contains(&"# comfyui is not set  # from default".to_string()), "{lines:?}");
    }
}
