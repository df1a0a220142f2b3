// The binary and its tests run with no environment variables: the rpath gets torch/lib (from
// torch-sys) and, with the Python bridge, the directory of the venv's libpython (from pyo3's
// build config) — without it the loader may find another libpython 3.11 first.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    #[cfg(feature = "python")]
    pyo3_build_config::add_libpython_rpath_link_args();
}
