// Binaries and tests of this crate run with no environment variables: the rpath gets torch/lib
// (from torch-sys) and the directory of libpython (from pyo3's build config).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    pyo3_build_config::add_libpython_rpath_link_args();
}
