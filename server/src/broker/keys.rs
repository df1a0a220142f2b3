//! Key names. Everything one deployment keeps in Redis starts with its namespace, so several
//! deployments (or test runs) can share one Redis.

/// The prefix of a deployment's keys (`comfyrs` unless `--broker-namespace` says otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    pub const DEFAULT: &'static str = "comfyrs";

    /// A namespace; `:` separates its parts from ours, so it may not end with one.
    pub fn new(name: &str) -> Result<Namespace, String> {
        let name = name.trim();
        if name.is_empty() || name.ends_with(':') || name.chars().any(char::is_whitespace) {
            return Err(format!("invalid broker namespace {name:?}: use letters, digits, '-', '_' or inner ':'"));
        }
        Ok(Namespace(name.to_string()))
    }

    /// The stream of prompts waiting for a worker.
    pub fn prompts(&self) -> String {
        format!("{}:prompts", self.0)
    }

    /// The stream of events the workers send back for the prompts' clients.
    pub fn events(&self) -> String {
        format!("{}:events", self.0)
    }

    /// The channel interrupts and cancellations reach the workers on.
    pub fn control(&self) -> String {
        format!("{}:control", self.0)
    }

    /// Set when a prompt is cancelled after a worker claimed it (the worker may not have heard
    /// the interrupt: it checks this before it starts and whenever it renews the lease).
    pub fn cancelled(&self, prompt_id: &str) -> String {
        format!("{}:cancelled:{prompt_id}", self.0)
    }

    /// The prompts offered to worker `name` first (docs/scale-out.md, "Cache affinity").
    pub fn offers(&self, name: &str) -> String {
        format!("{}:offers:{name}", self.0)
    }

    /// The set of every offers stream (the server sweeps them).
    pub fn offer_streams(&self) -> String {
        format!("{}:offer-streams", self.0)
    }

    /// A worker's heartbeat (`worker("")` is the prefix of all of them).
    pub fn worker(&self, name: &str) -> String {
        format!("{}:worker:{name}", self.0)
    }

    /// The consumer group every worker reads the prompt stream through.
    pub fn workers_group(&self) -> &'static str {
        "workers"
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace(Self::DEFAULT.to_string())
    }
}
