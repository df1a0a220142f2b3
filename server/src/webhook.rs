//! Webhooks (beyond ComfyUI): a prompt submitted with `extra_data.webhook` set to an http(s)
//! URL gets its job record (as `GET /api/jobs/{id}` shows it) POSTed there when it finishes,
//! succeeds, fails or is cancelled. Deliveries run as background tasks with retries and
//! exponential backoff; the queue and the executor thread never wait for them. They live in
//! memory: a delivery still retrying when the server stops is lost (logged).

use std::time::Duration;

use serde_json::Value as Json;

/// How hard a delivery tries.
#[derive(Clone, Debug)]
pub struct WebhookPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The wait after the first failed attempt; it doubles after each further one.
    pub first_delay: Duration,
    /// One attempt's limit (connect, send, answer).
    pub timeout: Duration,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        WebhookPolicy { attempts: 5, first_delay: Duration::from_millis(500), timeout: Duration::from_secs(10) }
    }
}

/// Checks `extra_data.webhook` at submission: absent or null, or an http(s) URL with a host.
pub fn check(v: Option<&Json>) -> Result<(), String> {
    let url = match v {
        None | Some(Json::Null) => return Ok(()),
        Some(Json::String(s)) => s,
        Some(other) => return Err(format!("extra_data.webhook must be an http:// or https:// URL (a string), not {}", comfyrs_runtime::prompt::json_kind(other))),
    };
    let bad = || format!("extra_data.webhook must be an http:// or https:// URL such as http://127.0.0.1:9000/done, got {url:?}");
    let uri: axum::http::Uri = url.parse().map_err(|_| bad())?;
    let http = matches!(uri.scheme_str(), Some("http") | Some("https"));
    if !http || uri.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(())
}

/// Sends job records to webhooks from tasks on the server's runtime.
pub struct Webhooks {
    rt: tokio::runtime::Handle,
    policy: WebhookPolicy,
    agent: ureq::Agent,
}

impl Webhooks {
    pub fn new(rt: tokio::runtime::Handle, policy: WebhookPolicy) -> Self {
        let agent = ureq::Agent::config_builder().timeout_global(Some(policy.timeout)).http_status_as_error(true).build().into();
        Webhooks { rt, policy, agent }
    }

    /// Starts delivering `record` to `url`; returns at once (callable from any thread).
    pub fn send(&self, url: String, prompt_id: String, record: Json) {
        let (agent, policy) = (self.agent.clone(), self.policy.clone());
        let body = record.to_string();
        self.rt.spawn(async move {
            let mut delay = policy.first_delay;
            let mut last = String::new();
            for attempt in 1..=policy.attempts.max(1) {
                let (agent, url2, body) = (agent.clone(), url.clone(), body.clone());
                // ureq blocks: each attempt runs on the blocking pool.
                let sent = tokio::task::spawn_blocking(move || {
                    agent.post(&url2).header("content-type", "application/json").send(body.as_str()).map(|_| ()).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match sent {
                    Ok(()) => return,
                    Err(e) => last = e,
                }
                if attempt < policy.attempts {
                    tracing::debug!("webhook {url} for prompt {prompt_id}: attempt {attempt} failed ({last}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
            }
            tracing::error!("webhook {url} for prompt {prompt_id}: not delivered after {} attempts, giving up: {last}", policy.attempts.max(1));
        });
    }
}
