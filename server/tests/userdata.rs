//! `/users`, `/settings` and `/userdata` in single-user mode over real HTTP on loopback,
//! including every way out of the user's folder we know of.

mod common;

use std::path::Path;

use common::*;
use comfyrs_server::ServeOptions;
use serde_json::json;

fn start(dir: &Path) -> Server {
    Server::start_with(ServeOptions { port: 0, ..ServeOptions::new(dir) })
}

fn post_raw(server: &Server, path: &str, body: &[u8]) -> Reply {
    server.request("POST", path, &[], Some(body))
}

#[test]
fn users_and_settings_in_single_user_mode() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    assert_eq!(server.get("/users"), (200, json!({"storage": "server", "migrated": false})));
    let (status, err) = server.post("/users", &json!({"username": "bob"}));
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("single-user"));

    assert_eq!(server.get("/api/settings"), (200, json!({})));
    assert_eq!(server.get("/settings/Comfy.Locale"), (200, json!(null)));
    assert_eq!(server.post("/settings", &json!({"a": 1, "b": {"x": true}})).0, 200);
    assert_eq!(server.post("/api/settings/Comfy.Locale", &json!("en")).0, 200);
    assert_eq!(server.post("/settings", &json!({"a": 2})).0, 200);
    assert_eq!(server.get("/settings"), (200, json!({"a": 2, "b": {"x": true}, "Comfy.Locale": "en"})));
    assert_eq!(server.get("/api/settings/Comfy.Locale"), (200, json!("en")));
    assert_eq!(server.get("/users"), (200, json!({"storage": "server", "migrated": true})));
    let on_disk: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("user/default/comfy.settings.json")).unwrap()).unwrap();
    assert_eq!(on_disk["a"], 2);
    assert_eq!(server.post("/settings", &json!([1, 2])).0, 400);
    assert_eq!(post_raw(&server, "/settings", b"{not json").status, 400);

    // Concurrent updates of different settings all land (the frontend sends several at once).
    std::thread::scope(|s| {
        for i in 0..16 {
            let server = &server;
            s.spawn(move || assert_eq!(server.post(&format!("/settings/k{i}"), &json!(i)).0, 200));
        }
    });
    let (_, all) = server.get("/settings");
    for i in 0..16 {
        assert_eq!(all[format!("k{i}")], i, "{all}");
    }

    // A corrupt file reads as empty rather than breaking the frontend's boot.
    std::fs::write(dir.path().join("user/default/comfy.settings.json"), "{broken").unwrap();
    assert_eq!(server.get("/settings"), (200, json!({})));
}

#[test]
fn userdata_files_are_written_read_listed_moved_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let root = dir.path().join("user/default");

    // `%2F` stays inside the one path segment and is a folder separator once decoded.
    let r = post_raw(&server, "/userdata/workflows%2Fa.json", b"{\"a\": 1}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!("workflows/a.json"));
    assert_eq!(std::fs::read(root.join("workflows/a.json")).unwrap(), b"{\"a\": 1}");
    let r = server.get_bytes("/api/userdata/workflows%2Fa.json");
    assert_eq!((r.status, r.text()), (200, "{\"a\": 1}".to_string()));
    assert_eq!(r.header("content-disposition"), Some("attachment"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    // overwrite=false refuses; the default overwrites; full_info answers the file's record.
    assert_eq!(post_raw(&server, "/userdata/workflows%2Fa.json?overwrite=false", b"x").status, 409);
    let r = post_raw(&server, "/userdata/workflows%2Fa.json?full_info=true", b"{\"a\": 22}");
    let info = r.json();
    assert_eq!(info["path"], "workflows/a.json");
    assert_eq!(info["size"], 9);
    assert!(info["modified"].as_i64().unwrap() > 1_600_000_000_000, "{info}");
    assert!(info["created"].as_i64().unwrap() > 1_600_000_000_000, "{info}");
    // Twice-encoded separators are decoded once more, as ComfyUI does.
    assert_eq!(post_raw(&server, "/userdata/workflows%252Fsub%252Fb.json", b"b").json(), json!("workflows/sub/b.json"));
    post_raw(&server, "/userdata/workflows%2F.index.json", b"{}");
    post_raw(&server, "/userdata/top.json", b"t");

    assert_eq!(server.get("/userdata?dir=workflows"), (200, json!(["a.json"])));
    assert_eq!(server.get("/userdata?dir=workflows&recurse=true"), (200, json!(["a.json", "sub/b.json"])));
    assert_eq!(server.get("/userdata?dir=workflows&recurse=true&split=true"), (200, json!([["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]])));
    let (_, full) = server.get("/userdata?dir=workflows&recurse=true&full_info=true");
    assert_eq!(full[1]["path"], "sub/b.json");
    assert_eq!(full[1]["size"], 1);
    assert_eq!(server.get("/userdata").0, 400);
    assert_eq!(server.get("/userdata?dir=").0, 400);
    assert_eq!(server.get("/userdata?dir=nothing").0, 404);

    let (status, v2) = server.get("/v2/userdata");
    assert_eq!(status, 200);
    let names: Vec<(&str, &str)> = v2.as_array().unwrap().iter().map(|e| (e["type"].as_str().unwrap(), e["path"].as_str().unwrap())).collect();
    // Directories first, then files, each by name.
    assert_eq!(names[..2], [("directory", "workflows/sub"), ("directory", "workflows")]);
    assert!(names[2..].iter().all(|(t, _)| *t == "file"), "{names:?}");
    assert!(names.contains(&("file", "workflows/.index.json")));
    let top = v2.as_array().unwrap().iter().find(|e| e["path"] == "top.json").unwrap();
    assert_eq!(top["name"], "top.json");
    assert_eq!(top["size"], 1);
    assert!(top["modified"].as_f64().unwrap() > 1.6e9);
    let (_, sub) = server.get("/v2/userdata?path=workflows%2Fsub");
    assert_eq!(sub, json!([{"name": "b.json", "path": "workflows/sub/b.json", "type": "file", "size": 1, "modified": sub[0]["modified"]}]));
    assert_eq!(server.get("/v2/userdata?path=missing").0, 404);
    assert_eq!(server.get("/v2/userdata?path=top.json").0, 400);

    // Move: into a new folder, refusing to replace when told, 404 for a missing source.
    let r = post_raw(&server, "/userdata/workflows%2Fa.json/move/archive%2Fa.json", b"");
    assert_eq!(r.json(), json!("archive/a.json"));
    assert!(!root.join("workflows/a.json").exists());
    assert_eq!(std::fs::read(root.join("archive/a.json")).unwrap(), b"{\"a\": 22}");
    assert_eq!(post_raw(&server, "/userdata/top.json/move/archive%2Fa.json?overwrite=false", b"").status, 409);
    let r = post_raw(&server, "/api/userdata/top.json/move/archive%2Fa.json?full_info=true", b"");
    assert_eq!(r.json()["path"], "archive/a.json");
    assert_eq!(std::fs::read(root.join("archive/a.json")).unwrap(), b"t");
    assert_eq!(post_raw(&server, "/userdata/gone.json/move/x.json", b"").status, 404);

    // Delete: 204, then 404.
    assert_eq!(server.request("DELETE", "/userdata/archive%2Fa.json", &[], None).status, 204);
    assert!(!root.join("archive/a.json").exists());
    assert_eq!(server.request("DELETE", "/userdata/archive%2Fa.json", &[], None).status, 404);
    assert_eq!(server.get_bytes("/userdata/archive%2Fa.json").status, 404);
}

#[test]
fn userdata_is_never_rendered_as_a_page_except_user_css() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    post_raw(&server, "/userdata/x.html", b"<script>alert(1)</script>");
    post_raw(&server, "/userdata/user.css", b"body{}");
    let r = server.get_bytes("/userdata/x.html");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("content-disposition"), Some("attachment"));
    let r = server.get_bytes("/userdata/user.css");
    assert_eq!(r.header("content-type"), Some("text/css"));
    assert_eq!(r.header("content-disposition"), Some("inline"));
    assert_eq!(r.text(), "body{}");
}

#[test]
fn userdata_never_leaves_the_user_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    std::fs::write(dir.path().join("user/secret.json"), "secret").unwrap();
    post_raw(&server, "/userdata/mine.json", b"m");

    // Escapes (403) and malformed names (400), in the path, the listing and the move target.
    for (file, status) in [
        ("..%2Fsecret.json", 403),
        ("..%252Fsecret.json", 403),
        ("%252E%252E%252Fsecret.json", 403),
        ("a%2F..%2F..%2Fsecret.json", 403),
        ("%2Fetc%2Fpasswd", 403),
        ("%252Fetc%252Fpasswd", 403),
        ("..%5Csecret.json", 400),
        ("a%255C..%255Csecret.json", 400),
        ("x%00.json", 400),
        ("x%2500.json", 400),
        ("..", 403),
    ] {
        assert_eq!(server.get_bytes(&format!("/userdata/{file}")).status, status, "GET {file}");
        assert_eq!(post_raw(&server, &format!("/userdata/{file}"), b"overwritten").status, status, "POST {file}");
        assert_eq!(server.request("DELETE", &format!("/userdata/{file}"), &[], None).status, status, "DELETE {file}");
        assert_eq!(post_raw(&server, &format!("/userdata/mine.json/move/{file}"), b"").status, status, "move to {file}");
        assert_eq!(post_raw(&server, &format!("/userdata/{file}/move/stolen.json"), b"").status, status, "move from {file}");
        assert_eq!(server.get(&format!("/userdata?dir={file}")).0, status, "list {file}");
    }
    for path in ["..", "..%2F..", "%2Fetc", "a%5Cb"] {
        assert_eq!(server.get(&format!("/v2/userdata?path={path}")).0, 400, "v2 {path}");
    }
    assert_eq!(std::fs::read(dir.path().join("user/secret.json")).unwrap(), b"secret");
    assert!(dir.path().join("user/default/mine.json").exists());
    assert!(!dir.path().join("user/default/stolen.json").exists());
}

#[cfg(unix)]
#[test]
fn userdata_does_not_follow_links_out_of_the_user_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let root = dir.path().join("user/default");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(root.join("real")).unwrap();
    std::fs::write(outside.join("secret.json"), "secret").unwrap();
    std::fs::write(root.join("real/r.json"), "r").unwrap();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, root.join(name)).unwrap();
    link(&outside, "out");
    link(&outside.join("secret.json"), "secret.json");
    link(&outside.join("planted.json"), "dangling.json");
    link(&root.join("real"), "in");

    for file in ["out%2Fsecret.json", "secret.json", "dangling.json", "out%2Fnew%2Fx.json"] {
        assert_eq!(server.get_bytes(&format!("/userdata/{file}")).status, 403, "GET {file}");
        assert_eq!(post_raw(&server, &format!("/userdata/{file}"), b"overwritten").status, 403, "POST {file}");
        assert_eq!(server.request("DELETE", &format!("/userdata/{file}"), &[], None).status, 403, "DELETE {file}");
        assert_eq!(post_raw(&server, &format!("/userdata/real%2Fr.json/move/{file}?overwrite=true"), b"").status, 403, "move to {file}");
    }
    assert_eq!(server.get("/userdata?dir=out").0, 403);
    assert_eq!(server.get("/v2/userdata?path=out").0, 400);
    // Listings leave out links that lead outside, keep those that stay in, and do not loop.
    link(&root, "loop");
    assert_eq!(server.get("/userdata?dir=real").1, json!(["r.json"]));
    let (_, all) = server.get("/userdata?dir=.&recurse=true");
    assert_eq!(all, json!(["real/r.json"]));
    let (_, v2) = server.get("/v2/userdata");
    let paths: Vec<&str> = v2.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(!paths.iter().any(|p| p.starts_with("out") || *p == "secret.json" || *p == "dangling.json"), "{paths:?}");
    assert!(paths.contains(&"in") && paths.contains(&"real/r.json"), "{paths:?}");
    // A link that stays inside works.
    assert_eq!(server.get_bytes("/userdata/in%2Fr.json").text(), "r");

    assert_eq!(std::fs::read(outside.join("secret.json")).unwrap(), b"secret");
    assert!(!outside.join("planted.json").exists() && !outside.join("new").exists());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn an_oversized_userdata_write_gets_413_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(ServeOptions { port: 0, max_upload: 1024, ..ServeOptions::new(dir.path()) });
    let head = format!("POST /userdata/big.json HTTP/1.1\r\nHost: {}\r\nContent-Length: 5000000\r\n\r\n", server.addr);
    let resp = server.raw(head.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"error\""), "{resp}");
    let body = vec![b'x'; 3000];
    let mut req = format!("POST /userdata/big.json HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", server.addr, body.len()).into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let resp = server.raw(&req);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"error\""), "{resp}");
    assert!(!dir.path().join("user/default/big.json").exists());
}

#[cfg(unix)]
#[test]
fn fuzzed_user_paths_never_reach_outside_nor_fail_the_server() {
    use proptest::test_runner::{Config, TestRunner};
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let root = dir.path().join("user/default");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP-SECRET").unwrap();
    std::fs::write(dir.path().join("user/secret.txt"), "TOP-SECRET").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
    let before = snapshot(&outside);
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    runner
        .run(&(hostile_name(), hostile_name()), |(a, b)| {
            let (ea, eb) = (encode(&a), encode(&b));
            for (method, path) in [
                ("GET", format!("/userdata/{ea}")),
                ("GET", format!("/userdata/{}", encode(&ea))),
                ("POST", format!("/userdata/{ea}?overwrite=true")),
                ("POST", format!("/userdata/{ea}/move/{eb}")),
                ("DELETE", format!("/userdata/{eb}")),
                ("GET", format!("/userdata?dir={ea}&recurse=true")),
                ("GET", format!("/v2/userdata?path={ea}")),
            ] {
                let r = server.request(method, &path, &[], (method == "POST").then_some(&b"FUZZ"[..]));
                assert!(r.status < 500, "{method} {path}: {} {}", r.status, r.text());
                assert!(!r.text().contains("TOP-SECRET"), "{method} {path} served the secret");
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(snapshot(&outside), before);
    assert_eq!(std::fs::read(dir.path().join("user/secret.txt")).unwrap(), b"TOP-SECRET");
}
