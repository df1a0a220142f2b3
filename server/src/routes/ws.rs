//! `/ws?clientId=`: the socket that carries status and execution messages.

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value as Json};

use super::AppState;
use crate::hub::{Frame, Subscription};

pub fn routes() -> Router<AppState> {
    Router::new().route("/ws", get(upgrade))
}

/// The flags the server announces (`feature_flags` reply and `GET /features`).
pub fn server_flags(max_upload: usize) -> Json {
    json!({
        "supports_preview_metadata": true,
        "max_upload_size": max_upload,
        "extension": {"manager": {"supports_v4": true}},
        "node_replacements": true,
        "assets": false,
    })
}

async fn upgrade(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>, ws: WebSocketUpgrade) -> Response {
    let client_id = q.get("clientId").filter(|c| !c.is_empty()).cloned().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    // Registered before the handshake's answer leaves: a client may queue a prompt the moment its
    // socket is open, and the socket's task starts only after that answer, so its first messages
    // (`execution_start`, even the final `executing`) went to no one, and the client waited for
    // them forever (seen as a 60 s timeout in the thousand-prompt test). They wait in the outbox.
    let sub = s.hub.connect(client_id.clone());
    // The node running now: the outbox holds what comes after it.
    let running = s.control.running();
    let (hub, id, generation) = (s.hub.clone(), client_id.clone(), sub.generation);
    ws.on_failed_upgrade(move |_| hub.disconnect(&id, generation))
        .on_upgrade(move |socket| session(s, socket, client_id, sub, running))
}

async fn session(s: AppState, mut socket: WebSocket, client_id: String, mut sub: Subscription, running: Option<(String, Option<String>)>) {
    let mut closing = s.closing.subscribe();
    let hello = Frame::event("status", s.status_data(Some(&client_id)));
    if send(&mut socket, hello).await.is_err() {
        s.hub.disconnect(&client_id, sub.generation);
        return;
    }
    // A client that reconnects while its prompt runs learns which node is running.
    if let Some((pid, Some(node))) = running {
        let owns = s.store.queued(&pid).ok().flatten().is_some_and(|i| i.client_id() == Some(client_id.as_str()));
        if owns && send(&mut socket, Frame::event("executing", json!({"node": node}))).await.is_err() {
            s.hub.disconnect(&client_id, sub.generation);
            return;
        }
    }
    let mut first_text = true;
    loop {
        tokio::select! {
            frame = sub.rx.recv() => {
                let Some(frame) = frame else { break };
                if send(&mut socket, frame).await.is_err() {
                    break;
                }
            }
            msg = socket.recv() => {
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        if std::mem::take(&mut first_text) {
                            if let Ok(v) = serde_json::from_str::<Json>(t.as_str()) {
                                if v.get("type").and_then(Json::as_str) == Some("feature_flags") {
                                    s.hub.set_flags(&client_id, v.get("data").cloned().unwrap_or(Json::Null));
                                    let reply = Frame::event("feature_flags", server_flags(s.options.max_upload));
                                    if send(&mut socket, reply).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
            _ = closing.changed() => break,
        }
    }
    s.hub.disconnect(&client_id, sub.generation);
    let _ = socket.send(Message::Close(None)).await;
}

async fn send(socket: &mut WebSocket, frame: Frame) -> Result<(), axum::Error> {
    match frame {
        Frame::Text(t) => socket.send(Message::Text(t.as_ref().into())).await,
        Frame::Binary(b) => socket.send(Message::Binary(b.to_vec().into())).await,
    }
}
