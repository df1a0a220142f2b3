//! The request guard: ComfyUI's refusal of other sites' requests to a loopback server, and the
//! optional access token (header, cookie, or `?token=` once), over real HTTP on loopback.

mod common;

use common::*;
use comfyrs_server::ServeOptions;
use serde_json::json;

fn head(method: &str, path: &str, host: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\nHost: {host}\n{extra}")
}

#[test]
fn other_sites_may_not_drive_a_loopback_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let port = server.addr.port();
    let me = format!("127.0.0.1:{port}");
    let get = |host: &str, extra: &str| server.raw_request(&head("GET", "/prompt", host, extra), b"").0;

    // Same origin, no origin, and origins without a port compared by name.
    assert_eq!(get(&me, ""), 200);
    assert_eq!(get(&me, &format!("Origin: http://127.0.0.1:{port}\n")), 200);
    assert_eq!(get(&me, "Origin: http://127.0.0.1\n"), 200);
    assert_eq!(get("localhost", "Origin: http://localhost:3000\n"), 200);
    assert_eq!(get(&me, "Origin: null\n"), 200);
    assert_eq!(get(&me, "Sec-Fetch-Site: same-origin\n"), 200);

    // A page elsewhere (or the same host on another port) posting to this server.
    assert_eq!(get(&me, "Origin: http://evil.example\n"), 403);
    assert_eq!(get(&me, &format!("Origin: http://evil.example:{port}\n")), 403);
    assert_eq!(get(&me, "Origin: http://127.0.0.1:3000\n"), 403);
    assert_eq!(get(&format!("localhost:{port}"), "Origin: http://127.0.0.1\n"), 403);
    assert_eq!(get(&format!("[::1]:{port}"), "Origin: http://evil.example\n"), 403);
    assert_eq!(get(&format!("app.localhost:{port}"), "Origin: http://evil.example\n"), 403);
    assert_eq!(get(&me, "Sec-Fetch-Site: cross-site\n"), 403);
    let (status, text) = server.raw_request(&head("POST", "/prompt", &me, "Origin: http://evil.example\n"), br#"{"prompt": {}}"#);
    assert_eq!(status, 403);
    assert!(text.contains("evil.example"), "{text}");
    assert_eq!(server.get("/queue").1["queue_pending"], json!([]));

    // A server reached by another name (not loopback) is not checked, as in ComfyUI.
    assert_eq!(get(&format!("myserver.lan:{port}"), "Origin: http://other.lan\n"), 200);
    // Preflights are answered without reaching a route.
    assert_eq!(server.raw_request(&head("OPTIONS", "/prompt", &me, ""), b"").0, 200);
}

#[test]
fn a_token_guards_every_route_and_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(ServeOptions { port: 0, auth_token: Some("s3cret".into()), ..ServeOptions::new(dir.path()) });

    for path in ["/prompt", "/api/prompt", "/api/jobs", "/", "/internal/logs", "/system_stats"] {
        let r = server.call("GET", path, &[], None);
        assert_eq!(r.status, 401, "{path}");
        assert!(r.body["error"].as_str().unwrap().contains("Authorization: Bearer"), "{}", r.body);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(server.call("GET", "/prompt", &[("Authorization", "Bearer wrong")], None).status, 401);
    assert_eq!(server.call("GET", "/prompt", &[("Authorization", "Bearer s3cre")], None).status, 401);
    assert_eq!(server.call("GET", "/prompt", &[("Authorization", "s3cret")], None).status, 401);
    assert_eq!(server.call("GET", "/prompt?token=nope", &[], None).status, 401);
    assert_eq!(server.call("GET", "/prompt", &[("Cookie", "comfyrs_token=s3cret")], None).status, 401);
    let (status, _) = server.post("/prompt", &json!({"prompt": wait_prompt("x", 1)}));
    assert_eq!(status, 401);
    assert_eq!(server.get("/queue").0, 401);

    assert_eq!(server.call("GET", "/prompt", &[("Authorization", "bearer s3cret")], None).status, 200);
    let ok = server.call("GET", "/prompt", &[("Authorization", "Bearer s3cret")], None);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["exec_info"]["queue_remaining"], 0);
    assert!(ok.header("set-cookie").is_none());
    let r = server.call(
        "POST",
        "/api/prompt",
        &[("Authorization", "Bearer s3cret")],
        Some(json!({"prompt": wait_prompt("x", 1)}).to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // A page load with ?token= gets a cookie that later requests carry instead.
    let first = server.call("GET", "/?token=s3cret", &[], None);
    assert_eq!(first.status, 200);
    let set = first.header("set-cookie").expect("a cookie").to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    assert!(!set.contains("s3cret"), "the cookie holds a hash, not the token: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    assert_eq!(server.call("GET", "/api/jobs", &[("Cookie", &cookie)], None).status, 200);
    assert_eq!(server.call("GET", "/api/jobs", &[("Cookie", &format!("theme=dark; {cookie}"))], None).status, 200);

    // The socket: refused without, open with the header or the cookie (or ?token=).
    match Socket::connect_with(&server, "w0", &[]) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        Err(e) => panic!("expected 401, got {e}"),
        Ok(_) => panic!("the socket opened without the token"),
    }
    let mut ws = Socket::connect_with(&server, "w1", &[("Cookie", &cookie)]).expect("the cookie opens the socket");
    assert_eq!(ws.text()["type"], "status");
    let mut ws = Socket::connect_with(&server, "w2", &[("Authorization", "Bearer s3cret")]).expect("the header opens the socket");
    assert_eq!(ws.text()["type"], "status");
    let (ws, _) = tungstenite::connect(format!("ws://{}/ws?clientId=w3&token=s3cret", server.addr)).expect("?token= opens the socket");
    drop(ws);
}
