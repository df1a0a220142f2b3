//! Comments cite documents inside the repository only. Design notes that lived outside it are
//! gone for a reader of the code, so no comment may name them; every Markdown file a comment
//! names must exist (paths are relative to the repository root), and a quoted section after it
//! (`docs/widen.md`, "The Exit") must be one of that file's headings, as must a decision id
//! after `docs/decisions.md`. A bare decision id needs a comment of its file that names
//! `docs/decisions.md`, and no comment cites a section by number.

use std::fs;
use std::path::{Path, PathBuf};

/// Documents that lived outside the repository (the file names without their `.md`, so that a
/// citation without the extension is caught too), and paths that lead out of it.
const OUTSIDE: &[&str] = &[
    "comfyui-compat",
    "recipe-and-nodes",
    "widen-algorithm",
    "lora-formats",
    "reference-tests",
    "DESIGN.md",
    "../shared",
    "spec/",
];

/// Source folders walked, where present.
const FOLDERS: &[&str] = &["runtime", "nodes", "bridge", "src", "tests", "core", "testkit", "scripts", "server"];

/// Top-level files checked besides the folders.
const ROOT_FILES: &[&str] = &["Cargo.toml", "Makefile", "build.rs"];

/// One comment line: where it is and its text (without the comment marker).
#[derive(Debug, PartialEq)]
struct Comment {
    line: usize,
    text: String,
}

/// The comments of a Rust file: line comments (`//`, `///`, `//!`) and the lines of block
/// comments, skipping string, raw-string and char literals so that their contents never count.
fn rust_comments(src: &str) -> Vec<Comment> {
    let c: Vec<char> = src.chars().collect();
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let next = c.get(i + 1).copied();
        match c[i] {
            '\n' => {
                line += 1;
                i += 1;
            }
            '/' if next == Some('/') => {
                let start = i;
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
                out.push(Comment { line, text: c[start..i].iter().collect() });
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                let mut text = String::new();
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else if c[i] == '\n' {
                        out.push(Comment { line, text: std::mem::take(&mut text) });
                        line += 1;
                        i += 1;
                    } else {
                        text.push(c[i]);
                        i += 1;
                    }
                }
                out.push(Comment { line, text });
            }
            'r' if (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
                && matches!(next, Some('#') | Some('"')) =>
            {
                let mut j = i + 1;
                while c.get(j) == Some(&'#') {
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let hashes = j - i - 1;
                let mut k = j + 1;
                while k < c.len() && !(c[k] == '"' && (1..=hashes).all(|h| c.get(k + h) == Some(&'#'))) {
                    if c[k] == '\n' {
                        line += 1;
                    }
                    k += 1;
                }
                i = k + 1 + hashes;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    if c.get(i) == Some(&'\n') {
                        line += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a), which has no closing quote.
            '\'' if next == Some('\\') => {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if c.get(i + 2) == Some(&'\'') => i += 3,
            _ => i += 1,
        }
    }
    out
}

/// The comments of a TOML, shell, Python or Makefile file: lines whose first non-blank is `#`.
fn hash_comments(src: &str) -> Vec<Comment> {
    src.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with('#'))
        .map(|(n, l)| Comment { line: n + 1, text: l.to_string() })
        .collect()
}

fn comments_of(path: &Path) -> Option<Vec<Comment>> {
    let name = path.file_name()?.to_str()?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let parse: fn(&str) -> Vec<Comment> = match ext {
        "rs" => rust_comments,
        "toml" | "sh" | "py" => hash_comments,
        _ if name == "Makefile" => hash_comments,
        _ => return None,
    };
    Some(parse(&fs::read_to_string(path).ok()?))
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" || name == "__pycache__" {
            continue;
        }
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// Markdown paths in `text` (`docs/widen.md`, `README.md`), each with its byte offset.
fn md_paths(text: &str) -> Vec<(usize, &str)> {
    let path_char = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.' | '/');
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find(".md") {
        let end = from + pos + 3;
        let start = text[..from + pos].rfind(|ch: char| !path_char(ch)).map_or(0, |s| s + 1);
        let after = text[end..].chars().next();
        if start < from + pos && !after.is_some_and(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
            out.push((end, &text[start..end]));
        }
        from = end;
    }
    out
}

/// Whether `text` holds a decision id (`D19`) as a word of its own.
fn has_decision_id(text: &str) -> bool {
    let b = text.as_bytes();
    let word = |i: usize| b.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
    (0..b.len()).any(|i| {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        b[i] == b'D' && (i == 0 || !word(i - 1)) && (1..=2).contains(&digits) && !word(i + 1 + digits)
    })
}

/// Headings of a Markdown file, without their `#`s.
fn headings(md: &str) -> Vec<String> {
    md.lines().filter(|l| l.starts_with('#')).map(|l| l.trim_start_matches('#').trim().to_string()).collect()
}

/// The first quoted section or decision id right after a cited path: `, "Heading"` or ` D19`.
enum Anchor<'a> {
    Heading(&'a str),
    Decision(&'a str),
}

fn anchor_after(rest: &str) -> Option<Anchor<'_>> {
    let rest = rest.strip_prefix('`').unwrap_or(rest);
    if let Some(q) = rest.strip_prefix(", \"") {
        return q.find('"').map(|e| Anchor::Heading(&q[..e]));
    }
    let id = rest.strip_prefix(' ')?.strip_prefix('D')?;
    let digits = id.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(id.len());
    (digits > 0).then(|| Anchor::Decision(&rest[1..2 + digits]))
}

/// Every violation in the repository at `root`, as `file:line: what`.
fn violations(root: &Path) -> (usize, Vec<String>) {
    let mut files = Vec::new();
    for folder in FOLDERS {
        walk(&root.join(folder), &mut files);
    }
    files.extend(ROOT_FILES.iter().map(|f| root.join(f)).filter(|p| p.is_file()));
    files.sort();

    let mut bad = Vec::new();
    let mut citations = 0;
    for file in &files {
        let Some(comments) = comments_of(file) else { continue };
        let rel = file.strip_prefix(root).unwrap_or(file).display().to_string();
        let names_decisions = comments.iter().any(|c| c.text.contains("docs/decisions.md"));
        for c in &comments {
            for name in OUTSIDE.iter().filter(|n| c.text.contains(*n)) {
                bad.push(format!("{rel}:{}: cites `{name}`, which is not in the repository: {}", c.line, c.text.trim()));
            }
            if c.text.contains('§') {
                bad.push(format!("{rel}:{}: a § number: cite a heading of a document in docs/ instead", c.line));
            }
            if !names_decisions && has_decision_id(&c.text) {
                bad.push(format!("{rel}:{}: a decision id, but no comment of the file names docs/decisions.md", c.line));
            }
        }
        // A citation may run over a line break, so each run of adjacent comment lines is read
        // as one text.
        let mut i = 0;
        while i < comments.len() {
            let mut j = i + 1;
            while j < comments.len() && comments[j].line == comments[j - 1].line + 1 {
                j += 1;
            }
            let mut text = String::new();
            let mut starts = Vec::new();
            for c in &comments[i..j] {
                starts.push((text.len(), c.line));
                let body = c.text.trim_start().trim_start_matches(['/', '!', '#', '*']).trim();
                text.push_str(body);
                text.push(' ');
            }
            let line_at = |off: usize| starts.iter().rev().find(|(s, _)| *s <= off).map_or(0, |(_, l)| *l);
            for (end, path) in md_paths(&text) {
                let line = line_at(end);
                let target = root.join(path);
                let Ok(md) = fs::read_to_string(&target) else {
                    bad.push(format!("{rel}:{line}: cites `{path}`, which does not exist in the repository"));
                    continue;
                };
                citations += 1;
                let heads = headings(&md);
                match anchor_after(&text[end..]) {
                    Some(Anchor::Heading(h)) if !heads.iter().any(|x| x == h) => {
                        bad.push(format!("{rel}:{line}: `{path}` has no heading \"{h}\""));
                    }
                    Some(Anchor::Decision(d)) if !heads.iter().any(|x| x.split(' ').next() == Some(d)) => {
                        bad.push(format!("{rel}:{line}: `{path}` has no decision {d}"));
                    }
                    _ => {}
                }
            }
            i = j;
        }
    }
    (citations, bad)
}

#[test]
fn comments_cite_only_documents_in_the_repository() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let (citations, bad) = violations(&root);
    assert!(bad.is_empty(), "{} comment citation(s) to fix:\n{}", bad.len(), bad.join("\n"));
    // The walk must have found the code's citations of docs/, or it checked nothing.
    assert!(citations > 50, "only {citations} citations of repository documents found under {}", root.display());
}

#[test]
fn comment_reader_skips_literals_and_finds_every_comment_form() {
    let src = concat!(
        "let a = \"// not a comment\"; // one\n",
        "let b = r#\"\"// still a string\"#; let c = '\"'; let d = '\\'';\n",
        "/// two\n",
        "fn f<'a>(x: &'a str) {} /* three\n",
        "four */ //! five\n",
    );
    let texts: Vec<(usize, String)> = rust_comments(src).into_iter().map(|c| (c.line, c.text)).collect();
    assert_eq!(
        texts,
        vec![
            (1, "// one".to_string()),
            (3, "/// two".to_string()),
            (4, " three".to_string()),
            (5, "four ".to_string()),
            (5, "//! five".to_string()),
        ]
    );
}

#[test]
fn citations_are_checked_for_paths_headings_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::create_dir_all(root.join("src")).unwrap();
    fs::write(root.join("docs/widen.md"), "# WIDEN\n\n## The Exit\n").unwrap();
    fs::write(root.join("docs/decisions.md"), "# Decisions\n\n## D19 — a cache\n").unwrap();
    fs::write(
        root.join("src/lib.rs"),
        concat!(
            "//! Fine: (`docs/widen.md`, \"The Exit\"), docs/decisions.md D19.\n",
            "\n",
            "// Broken: docs/widen.md, \"No such\n",
            "// heading\", docs/decisions.md D7, docs/nothing.md, decisions.md.\n",
            "const S: &str = \"docs/gone.md\";\n",
        ),
    )
    .unwrap();
    fs::write(root.join("src/bare.rs"), "// Per key (D4), see §3. Not ids: D, D123, 2D4, D4x.\nfn f() {}\n").unwrap();
    let outside = format!("// See {}.md.\n", OUTSIDE[0]);
    fs::write(root.join("src/other.rs"), outside).unwrap();
    let (citations, bad) = violations(root);
    assert_eq!(citations, 4);
    assert_eq!(
        bad,
        vec![
            "src/bare.rs:1: a § number: cite a heading of a document in docs/ instead".to_string(),
            "src/bare.rs:1: a decision id, but no comment of the file names docs/decisions.md".to_string(),
            "src/lib.rs:3: `docs/widen.md` has no heading \"No such heading\"".to_string(),
            "src/lib.rs:4: `docs/decisions.md` has no decision D7".to_string(),
            "src/lib.rs:4: cites `docs/nothing.md`, which does not exist in the repository".to_string(),
            "src/lib.rs:4: cites `decisions.md`, which does not exist in the repository".to_string(),
            format!("src/other.rs:1: cites `{}`, which is not in the repository: // See {}.md.", OUTSIDE[0], OUTSIDE[0]),
            format!("src/other.rs:1: cites `{}.md`, which does not exist in the repository", OUTSIDE[0]),
        ]
    );
}
