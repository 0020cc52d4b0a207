//! Link-time settings that every convkit binary needs, so that `cargo run` works with no
//! environment set by hand:
//! - an rpath to libtorch's lib directory (found by torch-sys), so the binary finds it at run time;
//! - libtorch_cuda linked even though no symbol of it is referenced directly (as-needed linking
//!   would drop it, and then `Device::Cuda` is never available; see docs/ARCHITECTURE.md).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
