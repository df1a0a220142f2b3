// Binaries and tests of this crate find libtorch without LD_LIBRARY_PATH: torch-sys tells us
// where torch/lib is, and we bake it into the rpath.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
