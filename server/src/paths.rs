//! Client-supplied paths under a server folder (outputs, inputs, user data).
//!
//! Two checks, both needed: [`join`] is lexical and rejects every spelling that could climb
//! out (`..`, absolute paths, backslashes, drive prefixes, control characters); [`check_inside`]
//! then resolves what already exists of the result, so a symbolic link inside the folder that
//! points elsewhere cannot be followed out of it. Percent-decoding is the caller's business:
//! these functions see the decoded string, so `%2F` arriving still encoded is a literal name.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("the file name is empty")]
    Empty,
    #[error("absolute paths are not accepted: give a path relative to the folder")]
    Absolute,
    #[error("`..` is not accepted in paths: give a path inside the folder")]
    Parent,
    #[error("backslashes are not accepted in paths: separate folders with `/`")]
    Backslash,
    #[error("control characters (NUL, newlines, ...) are not accepted in file names")]
    Control,
    #[error("the path leads outside its folder through a symbolic link")]
    Escapes,
    #[error("cannot resolve {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl PathError {
    /// A well-formed request for something outside the folder (ComfyUI answers 403), as
    /// opposed to a malformed name (400).
    pub fn is_escape(&self) -> bool {
        matches!(self, PathError::Absolute | PathError::Parent | PathError::Escapes)
    }
}

/// `rel` (segments separated by `/`) under `base`; empty and `.` segments are skipped, so an
/// empty `rel` is `base` itself. Purely lexical: see [`check_inside`] for links.
pub fn join(base: &Path, rel: &str) -> Result<PathBuf, PathError> {
    if rel.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    if rel.contains('\\') {
        return Err(PathError::Backslash);
    }
    if rel.starts_with('/') {
        return Err(PathError::Absolute);
    }
    let mut out = base.to_path_buf();
    for seg in rel.split('/') {
        match seg {
            "" | "." => continue,
            ".." => return Err(PathError::Parent),
            _ => {}
        }
        // One plain component on this platform (on Windows `C:` is a prefix, not a name).
        let mut parts = Path::new(seg).components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(_)), None) => out.push(seg),
            _ => return Err(PathError::Absolute),
        }
    }
    Ok(out)
}

/// [`join`] for a file: at least one named segment, so never `base` itself.
pub fn file(base: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let p = join(base, rel)?;
    if p == base {
        return Err(PathError::Empty);
    }
    Ok(p)
}

/// Fails when what exists of `path` (a [`join`] result under `base`) resolves outside `base`:
/// the deepest existing ancestor, or `path` itself, is canonicalized and compared. A dangling
/// link counts as escaping, since writing through it would create its target.
pub fn check_inside(base: &Path, path: &Path) -> Result<(), PathError> {
    let io = |p: &Path, source| PathError::Io { path: p.display().to_string(), source };
    let root = match base.canonicalize() {
        Ok(r) => r,
        // Nothing exists under a missing folder (or a file), so no link can lead out of it.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::InvalidFilename) => return Ok(()),
        Err(e) => return Err(io(base, e)),
    };
    if !path.starts_with(base) {
        return Err(PathError::Escapes);
    }
    let mut probe = path;
    loop {
        match std::fs::symlink_metadata(probe) {
            Ok(_) => {
                let real = probe.canonicalize().map_err(|_| PathError::Escapes)?;
                return if real.starts_with(&root) { Ok(()) } else { Err(PathError::Escapes) };
            }
            // Missing, under a file, or a name too long to exist: look at the parent.
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::InvalidFilename) => {
                if probe == base {
                    return Ok(());
                }
                probe = probe.parent().ok_or(PathError::Escapes)?;
            }
            Err(e) => return Err(io(probe, e)),
        }
    }
}

/// [`file`] then [`check_inside`].
pub fn resolve_file(base: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let p = file(base, rel)?;
    check_inside(base, &p)?;
    Ok(p)
}

/// [`join`] then [`check_inside`].
pub fn resolve_dir(base: &Path, rel: &str) -> Result<PathBuf, PathError> {
    let p = join(base, rel)?;
    check_inside(base, &p)?;
    Ok(p)
}

/// `path` relative to `base` with `/` separators (for responses).
pub fn relative(base: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(base).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> PathBuf {
        PathBuf::from("/srv/comfy/output")
    }

    /// Strictly inside: under `base`, and every added component a plain name.
    fn strictly_inside(base: &Path, p: &Path) -> bool {
        match p.strip_prefix(base) {
            Ok(rest) => rest.components().count() > 0 && rest.components().all(|c| matches!(c, Component::Normal(_))),
            Err(_) => false,
        }
    }

    #[test]
    fn plain_names_and_subfolders_join() {
        assert_eq!(file(&base(), "a.png").unwrap(), base().join("a.png"));
        assert_eq!(file(&base(), "sub/./a.png").unwrap(), base().join("sub/a.png"));
        assert_eq!(join(&base(), "").unwrap(), base());
        assert_eq!(join(&base(), "a//b/").unwrap(), base().join("a/b"));
        // Still encoded after the one decoding the caller did: a literal name, harmless.
        assert_eq!(file(&base(), "..%2F..%2Fetc").unwrap(), base().join("..%2F..%2Fetc"));
        assert_eq!(file(&base(), "a..b.png").unwrap(), base().join("a..b.png"));
    }

    #[test]
    fn escapes_are_rejected() {
        for bad in ["../x", "a/../../x", "..", "/etc/passwd", "//x", "a\\..\\b", "..\\x", "x\0y", "a\nb", "sub/../x"] {
            assert!(file(&base(), bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(file(&base(), ""), Err(PathError::Empty)));
        assert!(matches!(file(&base(), "./"), Err(PathError::Empty)));
    }

    #[cfg(unix)]
    #[test]
    fn links_out_of_the_folder_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(base.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, base.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), base.join("secret.txt")).unwrap();
        std::os::unix::fs::symlink(outside.join("nothing-yet"), base.join("dangling")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("in")).unwrap();
        for bad in ["out/secret.txt", "out", "out/new/file.png", "secret.txt", "dangling", "dangling/x"] {
            assert!(matches!(resolve_file(&base, bad), Err(PathError::Escapes)), "{bad:?} accepted");
        }
        assert!(resolve_file(&base, "in/new.png").is_ok());
        // Found by the HTTP fuzz test: a base under a file is no error, just empty.
        std::fs::write(base.join("file.png"), "f").unwrap();
        assert!(resolve_file(&base.join("file.png/sub"), "x.png").is_ok());
        assert!(resolve_file(&base, "file.png/sub/x.png").is_ok());
        assert!(resolve_file(&base, &"n".repeat(300)).is_ok());
        assert!(resolve_file(&base, "real/a/b/new.png").is_ok());
        assert!(resolve_dir(&base, "").is_ok());
    }

    /// Arbitrary strings with a bias towards the pieces that make escapes.
    fn hostile() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just("/".to_string()),
            Just("\\".to_string()),
            Just("%2e%2e".to_string()),
            Just("%2F".to_string()),
            Just("%5C".to_string()),
            Just("\0".to_string()),
            Just("C:".to_string()),
            Just("é".to_string()),
            Just("\u{202e}".to_string()),
            Just("．．".to_string()),
            "[a-z]{1,3}",
            any::<String>(),
        ];
        prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn a_joined_file_is_rejected_or_strictly_inside(s in hostile()) {
            let b = base();
            if let Ok(p) = file(&b, &s) {
                prop_assert!(strictly_inside(&b, &p), "{s:?} gave {p:?}");
            }
            if let Ok(p) = join(&b, &s) {
                prop_assert!(p == b || strictly_inside(&b, &p), "{s:?} gave {p:?}");
            }
        }

        #[test]
        fn any_string_is_rejected_or_strictly_inside(s in any::<String>()) {
            let b = base();
            if let Ok(p) = file(&b, &s) {
                prop_assert!(strictly_inside(&b, &p), "{s:?} gave {p:?}");
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn resolved_paths_stay_inside_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(base.join("d")).unwrap();
        std::fs::create_dir_all(outside.join("d")).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("out")).unwrap();
        std::os::unix::fs::symlink(base.join("d"), base.join("in")).unwrap();
        std::os::unix::fs::symlink("../outside", base.join("rel")).unwrap();
        let root = base.canonicalize().unwrap();
        let segment = prop_oneof![
            Just("out"), Just("in"), Just("rel"), Just("d"), Just(".."), Just("."), Just("x"), Just(""), Just("\\"), Just("%2F")
        ];
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 1000, ..ProptestConfig::default() });
        runner
            .run(&prop::collection::vec(segment, 0..6), |segs| {
                let s = segs.join("/");
                if let Ok(p) = resolve_dir(&base, &s) {
                    // What exists of it resolves inside the canonical base.
                    let mut probe = p.as_path();
                    while std::fs::symlink_metadata(probe).is_err() {
                        probe = probe.parent().unwrap();
                    }
                    let real = probe.canonicalize().unwrap();
                    prop_assert!(real.starts_with(&root), "{s:?} resolved to {real:?}");
                }
                Ok(())
            })
            .unwrap();
    }
}
