//! Link settings for libtorch from the PyPI wheel (see `.cargo/config.toml`).
//!
//! - `--no-as-needed -ltorch_cuda`: nothing in our objects references libtorch_cuda directly,
//!   so the default `--as-needed` would drop it and `tch::Cuda::is_available()` would be false
//!   even on a GPU machine. On a CPU-only machine the library still loads (the wheel carries
//!   the CUDA runtime libraries) and reports no device.
//! - an rpath to the wheel's `lib/` folder, so binaries and test binaries run without
//!   `LD_LIBRARY_PATH`.
//!
//! Every crate whose binaries link tch needs these settings: `training/build.rs` includes this
//! file as a module and calls [`link_libtorch`].
use std::path::PathBuf;

fn main() {
    link_libtorch();
}

/// Prints the cargo instructions above for the libtorch named by `LIBTORCH` (a warning when it
/// is not set).
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set; run `make setup` first");
        return;
    };
    let root = PathBuf::from(libtorch);
    let lib = std::fs::canonicalize(root.join("lib")).unwrap_or_else(|_| root.join("lib"));
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
