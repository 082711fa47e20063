//! Link settings for libtorch, the same as the backend's: `maas-bench` links tch, so it needs the
//! rpath to the wheel's `lib/` folder and the `--no-as-needed` link of `libtorch_cuda` (for
//! models and products on `cuda:N`) just as `maas-backend` does. The code is the backend's build
//! script, included as a module rather than copied.

// The backend's build script: its own `main` is not called here.
#[allow(dead_code)]
#[path = "../backend/build.rs"]
mod libtorch;

fn main() {
    libtorch::link_libtorch();
}
