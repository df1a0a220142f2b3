//! Connections to Redis, made one way for every part of the broker.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::BrokerError;

/// Commands other than blocking reads answer within this, or the call fails (and is retried by
/// the caller when [`BrokerError::is_transient`]).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The client for `url`, or an error saying the URL is not one.
pub(super) fn client(url: &str) -> Result<redis::Client, BrokerError> {
    redis::Client::open(url).map_err(|source| BrokerError::Url { url: url.to_string(), source })
}

/// A connection that reconnects by itself after Redis restarts. A `blocking` one (for blocking
/// reads, which would hold up every command queued behind them on a shared connection) waits
/// for answers as long as they take.
pub(super) async fn manager(url: &str, blocking: bool) -> Result<ConnectionManager, BrokerError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(3)
        .set_response_timeout(if blocking { None } else { Some(COMMAND_TIMEOUT) });
    client(url)?.get_connection_manager_with_config(config).await.map_err(|source| BrokerError::Redis { url: url.to_string(), source })
}
