//! Link-time settings and native code that every convkit binary needs, so that `cargo run`
//! works with no environment set by hand:
//! - an rpath to libtorch's lib directory (found by torch-sys), so the binary finds it at run time;
//! - libtorch_cuda linked even though no symbol of it is referenced directly (as-needed linking
//!   would drop it, and then `Device::Cuda` is never available; see docs/ARCHITECTURE.md);
//! - the c10d shim (csrc/c10d_shim.cpp): PyTorch's distributed engine (TCPStore, Gloo) behind a
//!   few C functions, compiled against the same libtorch's headers with its C++ ABI.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=CONVKIT_GLOO_INCLUDE");
    println!("cargo:rerun-if-changed=csrc");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    build_c10d_shim(Path::new(&lib));
}

/// The wheel ships c10d's headers but not gloo's, which ProcessGroupGloo.hpp includes: the
/// shim needs only their names (csrc/gloo_decl), or Debian's libgloo-dev headers when
/// CONVKIT_GLOO_INCLUDE points at them. libtorch_cpu carries gloo itself.
fn build_c10d_shim(lib: &Path) {
    let include = lib.parent().map(|p| p.join("include")).unwrap_or_default();
    let gloo = std::env::var("CONVKIT_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("csrc/gloo_decl"));
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/c10d_shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(gloo)
        .std("c++17")
        // The wheel's C++ ABI (std::string layout) must match, or every call with a string
        // breaks: scripts/setup.sh records it (LIBTORCH_CXX11_ABI) from the installed torch.
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        // Nothing of the shim (inline c10d code, any vtable a header defines) is exported, so
        // it can never take the place of libtorch's own.
        .flag("-fvisibility=hidden")
        .flag("-fvisibility-inlines-hidden")
        // ProcessGroupGloo.hpp declares the class only under this macro, as in the wheel's build.
        .define("USE_C10D_GLOO", None)
        .warnings(false);
    println!("cargo::rustc-check-cfg=cfg(convkit_nccl)");
    if let Some(dirs) = nccl_headers(lib) {
        build
            .file("csrc/c10d_nccl.cpp")
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None);
        for d in dirs {
            build.include(d);
        }
        println!("cargo:rustc-cfg=convkit_nccl");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    build.compile("convkit_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// The include directories ProcessGroupNCCL.hpp needs, when this libtorch has CUDA and the
/// NVIDIA wheels beside it carry NCCL's and CUDA's headers (the CUDA runtime wheel's, plus
/// nvidia-cuda-crt and nvidia-cuda-cccl, which scripts/setup.sh installs); None otherwise, and
/// the binary has Gloo only.
fn nccl_headers(lib: &Path) -> Option<Vec<PathBuf>> {
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let nvidia = lib.parent()?.parent()?.join("nvidia");
    let nccl = nvidia.join("nccl/include");
    let cuda = std::fs::read_dir(&nvidia)
        .ok()?
        .flatten()
        .map(|e| e.path().join("include"))
        .find(|d| d.join("cuda_runtime_api.h").exists() && d.join("crt/host_config.h").exists())?;
    if !nccl.join("nccl.h").exists() {
        return None;
    }
    let cccl = cuda.join("cccl");
    Some(vec![cuda, cccl, nccl])
}
