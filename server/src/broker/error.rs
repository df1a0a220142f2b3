//! What can go wrong between comfyrs and Redis.

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The URL does not parse (`redis://HOST:PORT[/DB]`).
    #[error("invalid broker URL {url}: {source} (expected redis://HOST:PORT)")]
    Url { url: String, source: redis::RedisError },
    /// Redis could not be reached or refused a command.
    #[error("Redis at {url}: {source}")]
    Redis { url: String, source: redis::RedisError },
    /// A stream entry comfyrs cannot read (written by another version, or by hand).
    #[error("stream entry {entry} of {stream}: {why}")]
    Entry { stream: String, entry: String, why: String },
}

impl BrokerError {
    /// Whether retrying later may help (Redis unreachable, restarting or loading its data).
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::Redis { source, .. } => {
                source.is_io_error() || source.is_connection_dropped() || source.is_connection_refusal() || source.is_timeout()
                    || source.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
            }
            _ => false,
        }
    }
}
