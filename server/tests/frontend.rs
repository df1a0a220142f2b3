//! The web frontend's files and the answers it needs besides the API, over real HTTP.

mod common;

use common::Server;
use comfyrs_server::ServeOptions;

/// A response's status, one header and body, without failing on 4xx.
fn fetch(server: &Server, path: &str, header: &str) -> (u16, Option<String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut res = agent.get(&server.url(path)).call().unwrap();
    let h = res.headers().get(header).map(|v| v.to_str().unwrap().to_string());
    (res.status().as_u16(), h, String::from_utf8_lossy(&res.body_mut().read_to_vec().unwrap()).into_owned())
}

#[test]
fn frontend_files_templates_and_cache_headers() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    std::fs::create_dir_all(web.join("assets")).unwrap();
    std::fs::write(web.join("index.html"), "<!doctype html><title>page</title>").unwrap();
    std::fs::write(web.join("assets/app.js"), "export {}").unwrap();
    std::fs::write(web.join("assets/logo.png"), b"\x89PNG").unwrap();
    let server = Server::start_with(ServeOptions { port: 0, front_end_root: Some(web), ..ServeOptions::new(dir.path().join("state")) });

    // index.html is never cached.
    let (status, cache, body) = fetch(&server, "/", "cache-control");
    assert_eq!((status, cache.as_deref()), (200, Some("no-store, must-revalidate")));
    assert!(body.contains("<title>page</title>"));
    // Scripts are not cached, images are for a day, with their content types.
    let (status, cache, _) = fetch(&server, "/assets/app.js", "cache-control");
    assert_eq!((status, cache.as_deref()), (200, Some("no-store")));
    assert_eq!(fetch(&server, "/assets/app.js", "content-type").1.as_deref(), Some("text/javascript"));
    assert_eq!(fetch(&server, "/assets/logo.png", "cache-control").1.as_deref(), Some("public, max-age=86400"));
    // A missing file is 404, not index.html (a script answered with HTML breaks the page).
    let (status, cache, body) = fetch(&server, "/assets/missing.js", "cache-control");
    assert_eq!((status, cache.as_deref()), (404, Some("no-store")));
    assert!(!body.contains("<title>"));
    // The stylesheet index.html links beside itself: empty, not a 404.
    let (status, ty, body) = fetch(&server, "/user.css", "content-type");
    assert_eq!((status, ty.as_deref(), body.as_str()), (200, Some("text/css"), ""));
    // No templates package: an empty index (JSON, as the frontend checks), other files missing.
    for index in ["/templates/index.json", "/templates/index.de.json"] {
        let (status, ty, body) = fetch(&server, index, "content-type");
        assert_eq!((status, ty.as_deref(), body.as_str()), (200, Some("application/json"), "[]"), "{index}");
    }
    assert_eq!(fetch(&server, "/templates/index_logo.json", "content-type").2, "{}");
    assert_eq!(fetch(&server, "/templates/default.json", "content-type").0, 404);
    // The frontend reads --disable-api-nodes from here to skip fetching ComfyUI's release notes.
    let (_, stats) = server.get("/api/system_stats");
    assert!(stats["system"]["argv"].as_array().unwrap().iter().any(|a| a == "--disable-api-nodes"), "{stats}");
}
