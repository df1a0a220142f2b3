//! Webhooks: a prompt's job record POSTed to `extra_data.webhook` when it finishes, retried
//! with backoff, never in the way of the queue. Receivers are real loopback HTTP servers.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use comfyrs_server::{ServeOptions, WebhookPolicy};
use common::*;
use serde_json::{json, Value as Json};

/// What a receiver saw: the status it answered and the body it got.
struct Delivery {
    answered: u16,
    body: Json,
}

/// Reads one HTTP request (head and Content-Length body) from `s`.
fn read_request(s: &TcpStream) -> Option<Vec<u8>> {
    let mut r = BufReader::new(s);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(body)
}

/// A receiver on a free loopback port that answers 500 to the first `fail` requests and 200 to
/// the rest, reporting each.
fn receiver(fail: usize) -> (String, mpsc::Receiver<Delivery>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let Some(body) = read_request(&s) else { continue };
            let answered = if n < fail { 500 } else { 200 };
            let _ = write!(s, "HTTP/1.1 {answered} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let body = serde_json::from_slice(&body).unwrap_or(Json::Null);
            if tx.send(Delivery { answered, body }).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

fn quick_retries(dir: &std::path::Path) -> ServeOptions {
    ServeOptions {
        port: 0,
        webhooks: WebhookPolicy { attempts: 5, first_delay: Duration::from_millis(20), timeout: Duration::from_secs(5) },
        ..ServeOptions::new(dir)
    }
}

fn submit(server: &Server, prompt: Json, webhook: &str) -> String {
    let (status, resp) = server.post("/prompt", &json!({"prompt": prompt, "extra_data": {"webhook": webhook}}));
    assert_eq!(status, 200, "{resp}");
    resp["prompt_id"].as_str().unwrap().to_string()
}

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn the_job_record_arrives_once_after_failed_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(quick_retries(dir.path()));
    let (url, rx) = receiver(2);
    let id = submit(&server, wait_prompt("hooked", 1), &url);
    let mut seen = Vec::new();
    loop {
        let d = rx.recv_timeout(WAIT).expect("a delivery attempt");
        let ok = d.answered == 200;
        seen.push(d);
        if ok {
            break;
        }
    }
    assert_eq!(seen.iter().map(|d| d.answered).collect::<Vec<_>>(), [500, 500, 200]);
    let record = &seen[2].body;
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["status"], "completed");
    assert_eq!(record["outputs"], json!({"3": {"text": ["hooked"]}}));
    // The URL stays in extra_data (it is not a secret), like any other key.
    assert_eq!(record["workflow"]["extra_data"]["webhook"], url.as_str());
    // The same record as the route's.
    assert_eq!(&server.get(&format!("/api/jobs/{id}")).1, record);
    // Delivered: nothing more comes.
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err(), "a second delivery");
}

#[test]
fn cancelled_jobs_are_delivered_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(quick_retries(dir.path()));
    let (url, rx) = receiver(0);
    let running = submit(&server, wait_prompt("long", 600_000), &url);
    server.wait_job(&running, "in_progress");
    assert_eq!(server.post(&format!("/api/jobs/{running}/cancel"), &json!(null)).1, json!({"cancelled": true}));
    let d = rx.recv_timeout(WAIT).expect("the cancelled record");
    assert_eq!(d.body["id"], running.as_str());
    assert_eq!(d.body["status"], "cancelled");

    // A pending job cancelled before it ran has no history; its record says cancelled.
    assert_eq!(server.post("/queue/pause", &json!(null)).0, 200);
    let pending = submit(&server, wait_prompt("never", 1), &url);
    assert_eq!(server.post(&format!("/api/jobs/{pending}/cancel"), &json!(null)).1, json!({"cancelled": true}));
    let d = rx.recv_timeout(WAIT).expect("the dequeued record");
    assert_eq!(d.body["id"], pending.as_str());
    assert_eq!(d.body["status"], "cancelled");
}

#[test]
fn a_dead_receiver_never_delays_the_next_prompt() {
    let dir = tempfile::tempdir().unwrap();
    // One long attempt, so the delivery is still hanging while the next prompt runs.
    let options = ServeOptions {
        port: 0,
        webhooks: WebhookPolicy { attempts: 1, first_delay: Duration::from_millis(20), timeout: Duration::from_secs(600) },
        ..ServeOptions::new(dir.path())
    };
    let server = Server::start_with(options);
    // Accepts the connection, reads the request and never answers.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", hole.local_addr().unwrap());
    let (tx, got) = mpsc::channel();
    let (release_tx, release) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (s, _) = hole.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = tx.send(read_request(&s).is_some());
        let _ = release.recv_timeout(Duration::from_secs(60));
        drop(s);
    });
    let a = submit(&server, wait_prompt("a", 1), &url);
    server.wait_history(&a);
    assert!(got.recv_timeout(WAIT).unwrap(), "the delivery reached the receiver");
    // The delivery hangs; the queue goes on.
    let b = server.queue(wait_prompt("b", 1), None)["prompt_id"].as_str().unwrap().to_string();
    server.wait_history(&b);
    // And a receiver that refuses connections fails every attempt without holding anything up.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let c = submit(&server, wait_prompt("c", 1), &refused);
    server.wait_history(&c);
    let d = server.queue(wait_prompt("d", 1), None)["prompt_id"].as_str().unwrap().to_string();
    server.wait_history(&d);
    let _ = release_tx.send(());
}

#[test]
fn webhooks_that_are_not_http_urls_are_refused_at_submission() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for bad in [json!("ftp://example.com/x"), json!("not a url"), json!("http://"), json!("/relative"), json!(5), json!({"url": "http://x"})] {
        let (status, body) = server.post("/prompt", &json!({"prompt": wait_prompt("x", 1), "extra_data": {"webhook": bad}}));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("extra_data.webhook"), "{body}");
    }
    assert_eq!(server.get("/queue").1["queue_pending"], json!([]));
    // null is no webhook.
    let (status, _) = server.post("/prompt", &json!({"prompt": wait_prompt("x", 1), "extra_data": {"webhook": null}}));
    assert_eq!(status, 200);
}
