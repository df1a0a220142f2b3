//! Starting and stopping the server: the state the routes share, the executor thread, the
//! listener.

use std::net::SocketAddr;
use std::sync::Arc;

use comfyrs_runtime::Registry;
use serde_json::{json, Value as Json};

use crate::control::Control;
use crate::error::ServeError;
use crate::host::Host;
use crate::hub::{Frame, Hub};
use crate::options::ServeOptions;
use crate::logs::Subscribers;
use crate::store::{Finished, QueueItem, Store};
use crate::webhook::Webhooks;

/// What every route and the executor thread share.
pub struct Shared {
    pub options: ServeOptions,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub control: Arc<Control>,
    pub host: Arc<dyn Host>,
    pub registry: Arc<Registry>,
    /// Old node classes and what replaces them (`/node_replacements`, applied to prompts).
    pub replacements: crate::replace::Replacements,
    /// Flips to true when the server stops: open sockets close so the listener can finish.
    pub closing: tokio::sync::watch::Sender<bool>,
    pub webhooks: Webhooks,
    /// Sockets that asked for `logs` messages.
    pub log_subscribers: Arc<Subscribers>,
    /// With a broker: its connections; prompts run on workers (docs/scale-out.md).
    pub broker: Option<Arc<crate::broker::link::Link>>,
    /// `/metrics`: outcomes and node work, per worker (docs/server.md, "Metrics").
    pub metrics: crate::metrics::Metrics,
}

impl Shared {
    /// Prompts queued or running, as `status.exec_info.queue_remaining` counts them.
    pub fn queue_remaining(&self) -> usize {
        self.store.queue_len().unwrap_or_else(|e| {
            tracing::error!("{e}");
            0
        })
    }

    pub fn status_data(&self, sid: Option<&str>) -> serde_json::Value {
        let mut d = json!({"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}});
        if let Some(sid) = sid {
            d["sid"] = json!(sid);
        }
        d
    }

    /// `status` to every socket (after every queue change).
    pub fn broadcast_status(&self) {
        self.hub.send(None, Frame::event("status", self.status_data(None)));
    }

    /// Interrupts the running prompt (with an id, only that one); whether one was asked to
    /// stop. With a broker, the worker running it is asked, and a prompt no worker claimed yet
    /// is taken back from the stream (docs/scale-out.md, "Events and control").
    pub async fn interrupt(&self, prompt_id: Option<&str>) -> Result<bool, crate::error::ApiError> {
        match (&self.broker, prompt_id) {
            (None, _) => Ok(self.control.interrupt(prompt_id)),
            (Some(link), None) => {
                link.interrupt(None);
                Ok(true)
            }
            (Some(link), Some(id)) => crate::broker::link::cancel(self, link, id).await.map_err(|e| {
                crate::error::ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("cannot stop prompt {id}: {e}"))
            }),
        }
    }

    /// A prompt reached history: its webhook, if any, gets the job record. Called on the
    /// executor thread; the delivery runs on the runtime.
    pub fn finished(&self, f: &Finished) {
        if let Some(url) = f.entry.pointer("/prompt/3/webhook").and_then(Json::as_str) {
            self.webhooks.send(url.to_string(), f.prompt_id.clone(), crate::job::from_history(&f.prompt_id, &f.entry, true));
        }
    }

    /// A pending prompt was cancelled before it ran: its webhook, if any, gets the job record
    /// with status `cancelled` (there is no history entry).
    pub fn dequeued(&self, item: &QueueItem) {
        if let Some(url) = item.extra_data.get("webhook").and_then(Json::as_str) {
            let record = crate::job::from_queue(&item.prompt_id, crate::job::Status::Cancelled.as_str(), &item.number_json, &item.extra_data);
            self.webhooks.send(url.to_string(), item.prompt_id.clone(), record);
        }
    }
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, interrupts the running prompt (it stays queued for the next
    /// start) and waits for the executor thread.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.shared.closing.send_replace(true);
        self.shared.control.stop();
        if let Some(h) = self.http.take() {
            let _ = h.await;
        }
        if let Some(w) = self.worker.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }

    /// Runs until Ctrl-C or SIGTERM, then stops as [`Running::stop`] does.
    pub async fn until_signal(mut self) {
        wait_for_signal().await;
        tracing::info!("stopping: the running prompt, if any, is interrupted and stays queued");
        self.stop_inner().await;
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn ensure_dir(p: &std::path::Path) -> Result<(), ServeError> {
    std::fs::create_dir_all(p).map_err(|source| ServeError::Dir { path: p.display().to_string(), source })
}

/// Opens the state, starts the executor thread and listens. Must run inside a tokio runtime.
pub async fn serve(options: ServeOptions, host: Arc<dyn Host>) -> Result<Running, ServeError> {
    for d in [&options.state_dir, &options.output_dir, &options.input_dir, &options.temp_dir, &options.user_dir] {
        ensure_dir(d)?;
    }
    let store = match options.broker {
        None => Store::open(&options.database(), options.max_history)?,
        // Prompts marked running were handed to workers; the link reconciles them with the stream.
        Some(_) => Store::open_as_is(&options.database(), options.max_history)?,
    };
    let executor = host.executor();
    let paused = store.flag("paused")?;
    let control = Arc::new(Control::new(executor.interrupt.clone(), paused));
    let registry = host.registry();
    let replacements = crate::replace::Replacements::from_json(host.node_replacements());
    let addr = SocketAddr::new(options.listen, options.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr: addr.to_string(), source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: addr.to_string(), source })?;
    let closing = tokio::sync::watch::Sender::new(false);
    let webhooks = Webhooks::new(tokio::runtime::Handle::current(), options.webhooks.clone());
    let hub = Arc::new(Hub::default());
    let log_subscribers = Arc::new(Subscribers::default());
    tokio::spawn(crate::logs::forward(options.logs.clone(), hub.clone(), log_subscribers.clone(), closing.subscribe()));
    let broker = match &options.broker {
        Some(b) => {
            let link = crate::broker::link::Link::connect(b.clone()).await?;
            link.reconcile(&store).await?;
            Some(link)
        }
        None => None,
    };
    let shared = Arc::new(Shared { options, store, hub, control, host, registry, replacements, closing, webhooks, log_subscribers, broker, metrics: crate::metrics::Metrics::new() });
    tracing::info!("comfyrs serve listening on http://{addr}");
    let worker = match &shared.broker {
        None => crate::worker::spawn(shared.clone(), executor),
        Some(link) => {
            tracing::info!("prompts go to the workers through {} (namespace {})", link.settings.url, link.settings.namespace);
            tokio::spawn(crate::broker::link::forward_events(shared.clone(), link.clone()));
            tokio::spawn(crate::broker::link::watch_workers(shared.clone(), link.clone()));
            tokio::spawn(crate::broker::link::sweep_offers(shared.clone(), link.clone()));
            crate::broker::link::spawn_dispatcher(shared.clone(), link.clone())
        }
    }
    .map_err(ServeError::Thread)?;
    let app = crate::routes::app(shared.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!("the HTTP server stopped: {e}");
        }
    });
    Ok(Running { addr, shared, worker: Some(worker), shutdown: Some(tx), http: Some(http) })
}
