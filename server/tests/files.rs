//! `/view`, `/view_metadata`, `/upload/image`, `/upload/mask` and `/internal/files` over real
//! HTTP on loopback, including every way out of the folders we know of.

mod common;

use std::path::Path;

use common::*;
use comfyrs_server::{ModelFolder, ServeOptions};
use serde_json::json;

fn options(dir: &Path) -> ServeOptions {
    ServeOptions { port: 0, ..ServeOptions::new(dir) }
}

/// A 2×2 RGBA PNG with a `workflow` text chunk: red, green, blue, half-transparent white.
fn test_png() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 2, 2);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        enc.add_text_chunk("workflow".into(), "{\"nodes\": []}".into()).unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255, 255, 255, 255, 128]).unwrap();
    }
    out
}

/// A 2×2 RGBA PNG whose alpha is `alphas` (colour black).
fn mask_png(alphas: [u8; 4]) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(2, 2, |x, y| image::Rgba([0, 0, 0, alphas[(y * 2 + x) as usize]]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn decode(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory(bytes).unwrap()
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[test]
fn view_serves_files_from_each_folder_with_comfyui_headers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    let png = test_png();
    std::fs::write(dir.path().join("output/a.png"), &png).unwrap();
    std::fs::create_dir_all(dir.path().join("input/sub")).unwrap();
    std::fs::write(dir.path().join("input/sub/b.txt"), "input text").unwrap();
    std::fs::write(dir.path().join("temp/c.txt"), "temp text").unwrap();

    let r = server.get_bytes("/view?filename=a.png");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, png);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("content-disposition"), Some("filename=\"a.png\""));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    // Under /api too, and `type=output` is the default.
    assert_eq!(server.get_bytes("/api/view?filename=a.png&type=output").body, png);

    let r = server.get_bytes("/view?filename=b.txt&type=input&subfolder=sub");
    assert_eq!((r.status, r.text()), (200, "input text".to_string()));
    assert_eq!(server.get_bytes("/view?filename=c.txt&type=temp").text(), "temp text");
    // The annotation picks the folder over `type`.
    assert_eq!(server.get_bytes("/view?filename=c.txt%20%5Btemp%5D&type=input").text(), "temp text");
    assert_eq!(server.get_bytes("/view?filename=a.png%20%5Boutput%5D&type=temp").body, png);

    assert_eq!(server.get_bytes("/view?filename=missing.png").status, 404);
    assert_eq!(server.get_bytes("/view").status, 404);
    assert_eq!(server.get_bytes("/view?filename=a.png&type=elsewhere").status, 400);
    // Ranges work (videos are seeked).
    let r = server.request("GET", "/view?filename=b.txt&type=input&subfolder=sub", &[("range", "bytes=0-4")], None);
    assert_eq!((r.status, r.text()), (206, "input".to_string()));
}

#[test]
fn view_forces_script_capable_types_to_download() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    let out = dir.path().join("output");
    std::fs::write(out.join("x.html"), "<script>alert(1)</script>").unwrap();
    std::fs::write(out.join("x.js"), "alert(1)").unwrap();
    std::fs::write(out.join("x.css"), "body{}").unwrap();
    std::fs::write(out.join("x.xml"), "<a/>").unwrap();
    std::fs::write(out.join("x.svg"), "<svg xmlns=\"http://www.w3.org/2000/svg\"/>").unwrap();
    for name in ["x.html", "x.js", "x.css", "x.xml", "x.svg"] {
        let r = server.get_bytes(&format!("/view?filename={name}"));
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.header("content-type"), Some("application/octet-stream"), "{name}");
        assert_eq!(r.header("content-disposition"), Some(format!("attachment; filename=\"{name}\"").as_str()));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("vary"), Some("Sec-Fetch-Dest"));
    }
    // An SVG loaded by <img> is shown: scripts do not run there.
    let r = server.request("GET", "/view?filename=x.svg", &[("sec-fetch-dest", "image")], None);
    assert_eq!(r.header("content-type"), Some("image/svg+xml"));
    assert_eq!(r.header("content-disposition"), Some("filename=\"x.svg\""));
    // Only SVG: HTML asked for as an image still downloads.
    let r = server.request("GET", "/view?filename=x.html", &[("sec-fetch-dest", "image")], None);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    // A quote in the name cannot break out of the header.
    std::fs::write(out.join("q\"x.png"), "q").unwrap();
    let r = server.get_bytes("/view?filename=q%22x.png");
    assert_eq!(r.header("content-disposition"), Some("filename=\"q\\\"x.png\""));
}

#[test]
fn view_channels_and_previews_are_reencoded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    std::fs::write(dir.path().join("output/a.png"), test_png()).unwrap();

    let r = server.get_bytes("/view?filename=a.png&channel=rgb");
    assert_eq!(r.header("content-type"), Some("image/png"));
    let img = decode(&r.body);
    assert!(!img.color().has_alpha());
    assert_eq!(img.to_rgb8().get_pixel(1, 1).0, [255, 255, 255]);

    let r = server.get_bytes("/view?filename=a.png&channel=a");
    let img = decode(&r.body).to_rgba8();
    assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0, 255]);
    assert_eq!(img.get_pixel(1, 1).0, [0, 0, 0, 128]);

    let r = server.get_bytes("/view?filename=a.png&preview=webp;90");
    assert_eq!(r.header("content-type"), Some("image/webp"));
    assert_eq!(r.header("content-disposition"), Some("filename=\"a.png\""));
    assert_eq!(decode(&r.body).to_rgba8().get_pixel(1, 1).0[3], 128);

    let r = server.get_bytes("/view?filename=a.png&preview=jpeg;85");
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(decode(&r.body).dimensions_pair(), (2, 2));
    // Alpha asked for: WebP, since JPEG has none.
    let r = server.get_bytes("/view?filename=a.png&preview=jpeg;85&channel=rgba");
    assert_eq!(r.header("content-type"), Some("image/webp"));

    std::fs::write(dir.path().join("output/not-an-image.png"), "text").unwrap();
    let r = server.get_bytes("/view?filename=not-an-image.png&channel=rgb");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("not an image"));
}

trait Dims {
    fn dimensions_pair(&self) -> (u32, u32);
}

impl Dims for image::DynamicImage {
    fn dimensions_pair(&self) -> (u32, u32) {
        (self.width(), self.height())
    }
}

#[test]
fn view_never_leaves_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    std::fs::create_dir_all(dir.path().join("output/sub")).unwrap();
    std::fs::write(dir.path().join("output/sub/ok.txt"), "ok").unwrap();

    // Names: `..`, absolute, encoded separators (decoded once by the URL parser), backslashes,
    // NUL and newlines.
    for q in [
        "filename=../secret.txt",
        "filename=..%2Fsecret.txt",
        "filename=..%2F..%2Fsecret.txt",
        "filename=%2E%2E%2Fsecret.txt",
        "filename=/etc/passwd",
        "filename=%2Fetc%2Fpasswd",
        "filename=..%5Csecret.txt",
        "filename=sub%5C..%5C..%5Csecret.txt",
        "filename=ok.txt%00",
        "filename=a%0Ab.txt",
        "filename=..",
        "filename=",
    ] {
        let r = server.get_bytes(&format!("/view?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{q}");
    }
    // Subfolders that escape: 403.
    for q in [
        "subfolder=..",
        "subfolder=..%2F",
        "subfolder=sub%2F..%2F..",
        "subfolder=%2Ftmp",
        "subfolder=/",
        "subfolder=..%5C",
        "subfolder=sub%5C..%5C..",
        "subfolder=%2E%2E",
    ] {
        let r = server.get_bytes(&format!("/view?filename=secret.txt&{q}"));
        assert_eq!(r.status, 403, "{q}: {}", r.text());
    }
    // Still encoded after one decoding: a literal (missing) name, never a separator.
    assert_eq!(server.get_bytes("/view?filename=..%252Fsecret.txt").status, 400);
    assert_eq!(server.get_bytes("/view?filename=sub%252Fok.txt").status, 404);
    assert_eq!(server.get_bytes("/view?filename=ok.txt&subfolder=sub").text(), "ok");
    // The name's folders do not count (as ComfyUI): only `subfolder` does.
    assert_eq!(server.get_bytes("/view?filename=sub/ok.txt").status, 404);
}

#[cfg(unix)]
#[test]
fn view_does_not_follow_links_out_of_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.png"), "secret").unwrap();
    std::fs::create_dir_all(dir.path().join("output/real")).unwrap();
    std::fs::write(dir.path().join("output/real/fine.png"), "fine").unwrap();
    symlink(&outside.join("secret.png"), &dir.path().join("output/link.png"));
    symlink(&outside, &dir.path().join("output/out"));
    symlink(&dir.path().join("output/real"), &dir.path().join("output/in"));

    assert_eq!(server.get_bytes("/view?filename=link.png").status, 403);
    assert_eq!(server.get_bytes("/view?filename=secret.png&subfolder=out").status, 403);
    // A link that stays inside is fine.
    assert_eq!(server.get_bytes("/view?filename=fine.png&subfolder=in").text(), "fine");
}

#[test]
fn view_metadata_reads_the_safetensors_header() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models/loras");
    std::fs::create_dir_all(models.join("sub")).unwrap();
    let write = |name: &str, header: serde_json::Value| {
        let h = header.to_string();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
        std::fs::write(models.join(name), bytes).unwrap();
    };
    write("a.safetensors", json!({"__metadata__": {"ss_network_dim": "16"}, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}));
    write("sub/b.safetensors", json!({"__metadata__": {"k": "v"}}));
    write("plain.safetensors", json!({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}));
    std::fs::write(models.join("huge.safetensors"), u64::MAX.to_le_bytes()).unwrap();
    std::fs::write(dir.path().join("models/outside.safetensors"), "x").unwrap();
    let host = TestHost::with_models(vec![ModelFolder { name: "loras".into(), paths: vec![models.clone()], extensions: vec![".safetensors".into()] }]);
    let server = Server::start_with_host(options(dir.path()), host);

    let (status, meta) = server.get("/view_metadata/loras?filename=a.safetensors");
    assert_eq!((status, meta), (200, json!({"ss_network_dim": "16"})));
    assert_eq!(server.get("/api/view_metadata/loras?filename=sub%2Fb.safetensors"), (200, json!({"k": "v"})));
    for q in [
        "loras?filename=plain.safetensors",
        "loras?filename=huge.safetensors",
        "loras?filename=missing.safetensors",
        "loras?filename=a.ckpt",
        "loras",
        "checkpoints?filename=a.safetensors",
        "loras?filename=..%2Foutside.safetensors",
        "loras?filename=%2Fetc%2Fx.safetensors",
    ] {
        assert_eq!(server.get(&format!("/view_metadata/{q}")).0, 404, "{q}");
    }
}

#[test]
fn uploads_are_named_like_comfyui_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    let input = dir.path().join("input");

    let r = server.upload("/upload/image", &[Part::file("image", "a.png", b"one")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"name": "a.png", "subfolder": "", "type": "input"}));
    assert_eq!(std::fs::read(input.join("a.png")).unwrap(), b"one");
    // The same bytes again: the existing file is reused.
    let r = server.upload("/api/upload/image", &[Part::file("image", "a.png", b"one")]);
    assert_eq!(r.json()["name"], "a.png");
    // Other bytes: a numbered name, then the next number.
    assert_eq!(server.upload("/upload/image", &[Part::file("image", "a.png", b"two")]).json()["name"], "a (1).png");
    assert_eq!(server.upload("/upload/image", &[Part::file("image", "a.png", b"three")]).json()["name"], "a (2).png");
    assert_eq!(server.upload("/upload/image", &[Part::file("image", "a.png", b"two")]).json()["name"], "a (1).png");
    assert_eq!(std::fs::read(input.join("a (2).png")).unwrap(), b"three");
    // Overwrite replaces.
    for v in ["true", "1"] {
        let r = server.upload("/upload/image", &[Part::file("image", "a.png", v.as_bytes()), Part::text("overwrite", v)]);
        assert_eq!(r.json()["name"], "a.png");
        assert_eq!(std::fs::read(input.join("a.png")).unwrap(), v.as_bytes());
    }
    // Other folders and subfolders (created on demand).
    let r = server.upload("/upload/image", &[Part::file("image", "b.png", b"b"), Part::text("type", "temp"), Part::text("subfolder", "x/y")]);
    assert_eq!(r.json(), json!({"name": "b.png", "subfolder": "x/y", "type": "temp"}));
    assert_eq!(std::fs::read(dir.path().join("temp/x/y/b.png")).unwrap(), b"b");
    let r = server.upload("/upload/image", &[Part::file("image", "c.png", b"c"), Part::text("type", "output")]);
    assert_eq!(r.json()["type"], "output");
    assert!(dir.path().join("output/c.png").is_file());
    // No temporary files are left behind.
    let left: Vec<_> = std::fs::read_dir(&input).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with('.')).collect();
    assert!(left.is_empty(), "{left:?}");

    // Bad forms: 400 with a message.
    for parts in [
        vec![Part::text("type", "input")],
        vec![Part::file("image", "", b"x")],
        vec![Part::file("image", "a.png", b"x"), Part::text("type", "models")],
    ] {
        let r = server.upload("/upload/image", &parts);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.json()["error"].is_string());
    }
    let r = server.request("POST", "/upload/image", &[("content-type", "application/json")], Some(b"{}"));
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn uploads_never_leave_their_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    for (name, sub) in [
        ("../escape.png", ""),
        ("..", ""),
        ("a/../../escape.png", ""),
        ("/tmp/escape.png", ""),
        ("..\\escape.png", ""),
        ("a\\b.png", ""),
        ("nul\0.png", ""),
        ("x.png", ".."),
        ("x.png", "../.."),
        ("x.png", "a/../../.."),
        ("x.png", "/tmp"),
        ("x.png", "..\\.."),
        ("x.png", "a\0b"),
    ] {
        let r = server.upload("/upload/image", &[Part::file("image", name, b"x"), Part::text("subfolder", sub)]);
        assert_eq!(r.status, 400, "{name:?} in {sub:?}: {}", r.text());
    }
    assert!(!dir.path().join("escape.png").exists());
    assert!(!dir.path().join("x.png").exists());
    // Found by the fuzz test below: a subfolder through a file, or a name too long for the
    // file system, is the client's mistake (400), not the server's (500).
    std::fs::write(dir.path().join("input/file.png"), "f").unwrap();
    for (name, sub) in [("out", "file.png/x"), ("out", "file.png"), (&*"n".repeat(300), ""), ("x.png", &*"d".repeat(300))] {
        let r = server.upload("/upload/image", &[Part::file("image", name, b"x"), Part::text("subfolder", sub)]);
        assert_eq!(r.status, 400, "{name:?} in {sub:?}: {}", r.text());
    }
    // `%2F` in a form field is not decoded: a literal name.
    let r = server.upload("/upload/image", &[Part::file("image", "..%2Fescape.png", b"x")]);
    assert_eq!(r.json()["name"], "..%2Fescape.png");
    assert!(dir.path().join("input/..%2Fescape.png").is_file());
}

#[cfg(unix)]
#[test]
fn uploads_do_not_follow_links_out_of_their_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim.png"), "keep").unwrap();
    symlink(&outside, &dir.path().join("input/out"));
    symlink(&outside.join("victim.png"), &dir.path().join("input/victim.png"));
    symlink(&outside.join("new.png"), &dir.path().join("input/dangling.png"));

    let r = server.upload("/upload/image", &[Part::file("image", "x.png", b"x"), Part::text("subfolder", "out")]);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = server.upload("/upload/image", &[Part::file("image", "y.png", b"x"), Part::text("subfolder", "out/deeper")]);
    assert_eq!(r.status, 400, "{}", r.text());
    for name in ["victim.png", "dangling.png"] {
        for overwrite in ["true", "false"] {
            let r = server.upload("/upload/image", &[Part::file("image", name, b"x"), Part::text("overwrite", overwrite)]);
            assert_eq!(r.status, 400, "{name} overwrite={overwrite}: {}", r.text());
        }
    }
    assert_eq!(std::fs::read(outside.join("victim.png")).unwrap(), b"keep");
    assert!(!outside.join("x.png").exists() && !outside.join("deeper").exists() && !outside.join("new.png").exists());
}

#[test]
fn a_mask_upload_puts_its_alpha_on_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    std::fs::create_dir_all(dir.path().join("output/run")).unwrap();
    std::fs::write(dir.path().join("output/run/orig.png"), test_png()).unwrap();

    let mask = mask_png([0, 64, 128, 255]);
    let r = server.upload(
        "/upload/mask",
        &[
            Part::file("image", "clipspace-mask.png", &mask),
            Part::text("type", "input"),
            Part::text("subfolder", "clipspace"),
            Part::text("original_ref", r#"{"filename": "orig.png", "subfolder": "run", "type": "output"}"#),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"name": "clipspace-mask.png", "subfolder": "clipspace", "type": "input"}));
    let saved = std::fs::read(dir.path().join("input/clipspace/clipspace-mask.png")).unwrap();
    let img = decode(&saved).to_rgba8();
    assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0, 0]);
    assert_eq!(img.get_pixel(1, 0).0, [0, 255, 0, 64]);
    assert_eq!(img.get_pixel(0, 1).0, [0, 0, 255, 128]);
    assert_eq!(img.get_pixel(1, 1).0, [255, 255, 255, 255]);
    // The original's embedded workflow is kept.
    let reader = png::Decoder::new(std::io::Cursor::new(saved)).read_info().unwrap();
    let text: Vec<_> = reader.info().uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect();
    assert_eq!(text, [("workflow".to_string(), "{\"nodes\": []}".to_string())]);

    // The annotated form of the reference works too.
    std::fs::write(dir.path().join("input/o2.png"), test_png()).unwrap();
    let r = server.upload("/upload/mask", &[Part::file("image", "m2.png", &mask), Part::text("original_ref", r#"{"filename": "o2.png [input]"}"#)]);
    assert_eq!(r.status, 200, "{}", r.text());

    // Bad references: missing, escaping, unreadable, wrong size.
    for (reference, status) in [
        (r#"{"filename": "missing.png"}"#, 404),
        (r#"{"filename": "../secret.png"}"#, 400),
        (r#"{"filename": "orig.png", "subfolder": "../.."}"#, 403),
        (r#"{"filename": "orig.png", "subfolder": "run", "type": "models"}"#, 400),
        ("not json", 400),
    ] {
        let r = server.upload("/upload/mask", &[Part::file("image", "m.png", &mask), Part::text("original_ref", reference)]);
        assert_eq!(r.status, status, "{reference}: {}", r.text());
    }
    let r = server.upload("/upload/mask", &[Part::file("image", "m.png", &mask)]);
    assert_eq!(r.status, 400);
    let small = {
        let img = image::RgbaImage::new(1, 1);
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let r = server.upload("/upload/mask", &[Part::file("image", "m.png", &small), Part::text("original_ref", r#"{"filename": "orig.png", "subfolder": "run"}"#)]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("size"), "{}", r.text());
}

#[test]
fn an_oversized_upload_gets_413_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(ServeOptions { max_upload: 4096, ..options(dir.path()) });
    // Announced too large: refused before the body is sent.
    let (ctype, _) = multipart(&[]);
    let head = format!("POST /upload/image HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: 10000000\r\n\r\n", server.addr);
    let resp = server.raw(head.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("application/json"), "{resp}");
    assert!(resp.contains("4096 bytes"), "{resp}");

    // Chunked, so no length is announced: refused once the limit is crossed while reading.
    let big = vec![7u8; 3000];
    let parts = [Part::file("image", "big.png", &big), Part::file("image2", "big2.png", &big)];
    let (ctype, body) = multipart(&parts);
    let mut req = format!("POST /upload/image HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", server.addr, body.len()).into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let resp = server.raw(&req);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"error\""), "{resp}");
    // Under the limit still works, and the server is still up.
    let r = server.upload("/upload/image", &[Part::file("image", "small.png", b"small")]);
    assert_eq!(r.status, 200);

    // Any JSON route: a prompt over the limit is refused the same way, as JSON that names the
    // limit and the setting.
    let prompt = format!(r#"{{"prompt": {{"1": {{"class_type": "PrimitiveString", "inputs": {{"value": "{}"}}}}}}}}"#, "x".repeat(8000));
    let req = format!("POST /prompt HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{prompt}", server.addr, prompt.len());
    let resp = server.raw(req.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("application/json") && resp.contains("4096 bytes") && resp.contains("--max-upload"), "{resp}");
}

#[test]
fn internal_files_lists_newest_first_and_only_under_internal() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    let input = dir.path().join("input");
    let now = std::time::SystemTime::now();
    for (i, name) in ["old.png", "mid.png", "new.png"].iter().enumerate() {
        let f = std::fs::File::create(input.join(name)).unwrap();
        f.set_modified(now - std::time::Duration::from_secs(100 - i as u64 * 10)).unwrap();
    }
    std::fs::write(input.join(".DS_Store"), "").unwrap();
    std::fs::create_dir_all(input.join("folder")).unwrap();

    let (status, list) = server.get("/internal/files/input");
    assert_eq!(status, 200);
    assert_eq!(list, json!(["new.png [input]", "mid.png [input]", "old.png [input]"]));
    assert_eq!(server.get("/internal/files/output"), (200, json!([])));
    assert_eq!(server.get("/internal/files/models"), (400, json!({"error": "Invalid directory type"})));
    assert_eq!(server.get("/api/internal/files/input").0, 404);
    assert_eq!(server.get("/files/input").0, 404);
}

#[cfg(unix)]
#[test]
fn fuzzed_names_never_reach_outside_nor_fail_the_server() {
    use proptest::test_runner::{Config, TestRunner};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(options(dir.path()));
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP-SECRET").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOP-SECRET").unwrap();
    for kind in ["output", "input"] {
        symlink(&outside, &dir.path().join(kind).join("out"));
        std::fs::write(dir.path().join(kind).join("ok.png"), "fine").unwrap();
    }
    let before = snapshot(&outside);
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    runner
        .run(&(hostile_name(), hostile_name()), |(a, b)| {
            for path in [
                format!("/view?filename={}", encode(&a)),
                format!("/view?filename={}&subfolder={}", encode(&a), encode(&b)),
                format!("/view?filename={}&type=input&channel=rgb", encode(&a)),
                format!("/view?filename={}", encode(&encode(&a))),
                format!("/view_metadata/loras?filename={}", encode(&a)),
            ] {
                let r = server.get_bytes(&path);
                assert!(r.status < 500, "{path}: {} {}", r.status, r.text());
                assert!(!r.text().contains("TOP-SECRET"), "{path} served the secret");
            }
            let r = server.upload("/upload/image", &[Part::file("image", &a, b"FUZZ"), Part::text("subfolder", &b)]);
            assert!(r.status < 500, "upload {a:?} into {b:?}: {} {}", r.status, r.text());
            Ok(())
        })
        .unwrap();
    assert_eq!(snapshot(&outside), before);
    assert_eq!(std::fs::read(dir.path().join("secret.txt")).unwrap(), b"TOP-SECRET");
    assert_eq!(server.get("/system_stats").0, 200);
}
