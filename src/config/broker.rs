//! `[broker]`: several machines on one queue over Redis (docs/scale-out.md). `comfyrs serve`
//! with a broker URL hands prompts to it; `comfyrs worker` runs them and reports to the server.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `redis://HOST:PORT[/DB]`; unset: the server runs prompts itself.
    #[serde(deserialize_with = "redis_url")]
    pub url: Option<String>,
    /// Prefix of every Redis key, so deployments can share one Redis.
    #[serde(deserialize_with = "namespace")]
    pub namespace: String,
    /// The server a worker reports outcomes to (`http://HOST:PORT`).
    pub server: Option<String>,
    /// Seconds a prompt that loads or merges models waits for the worker that holds them before
    /// any worker may take it; 0 turns cache affinity off (docs/scale-out.md, "Cache affinity").
    #[serde(deserialize_with = "affinity_wait")]
    pub affinity_wait: f64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig { url: None, namespace: comfyrs_server::broker::Namespace::DEFAULT.to_string(), server: None, affinity_wait: 2.0 }
    }
}

impl BrokerConfig {
    /// The URL with any password replaced (for `comfyrs config` and logs).
    pub fn url_for_display(&self) -> Option<String> {
        let url = self.url.as_deref()?;
        Some(match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}://(credentials)@{}", &url[..scheme], &url[at + 1..]),
            _ => url.to_string(),
        })
    }
}

fn redis_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = Option::<String>::deserialize(d)?.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    if let Some(u) = &url {
        if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("redis+unix://") || u.starts_with("unix://")) {
            return Err(serde::de::Error::custom(format!("'{u}' is not a Redis URL; use redis://HOST:PORT (Debian's redis-server listens on 6379)")));
        }
    }
    Ok(url)
}

fn namespace<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    comfyrs_server::broker::Namespace::new(&text).map(|n| n.to_string()).map_err(serde::de::Error::custom)
}

fn affinity_wait<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    // From the environment the value arrives as text.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(f64),
        Text(String),
    }
    let secs = match Seconds::deserialize(d)? {
        Seconds::Number(v) => Some(v),
        Seconds::Text(t) => t.trim().trim_end_matches('s').trim().parse().ok(),
    };
    match secs {
        Some(v) if (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(serde::de::Error::custom("give the seconds a prompt waits for its warm worker, from 0 (affinity off) to 3600, e.g. 2")),
    }
}
