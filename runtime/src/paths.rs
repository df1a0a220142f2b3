//! Where comfyrs keeps what it makes once and reuses (a copied ComfyUI tree, benchmark models):
//! `$COMFYRS_CACHE`, else `~/.cache/comfyrs` (the temporary folder when there is no home).

use std::path::PathBuf;

pub fn cache_root() -> PathBuf {
    if let Some(c) = std::env::var_os("COMFYRS_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("comfyrs")
}
