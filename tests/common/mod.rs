//! Helpers shared by the integration tests. Each test binary uses some of them.
#![allow(dead_code)]

use std::io::{Read, Write};

/// Serves `body` once over HTTP on a free local port; returns the URL (a stand-in for the
/// real download servers, which this machine cannot reach).
pub fn serve_once(body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
    });
    format!("http://{addr}/cifar-10-binary.tar.gz")
}

/// An empty folder `convkit-<name>-<pid>` in the system's temp dir (emptied if a previous run
/// of the same process id left one).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("convkit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the set-up script's `.venv` python (torch, numpy, Pillow), with which the tests write
/// their fixtures in the real formats: `python(&["-c", script])` or
/// `python(&[fixture("make_x.py"), dir])`. Panics unless it succeeds.
pub fn python<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new(root.join(".venv/bin/python"))
        .args(args)
        .status()
        .expect("the set-up script's .venv python runs (./dev test creates it)");
    assert!(status.success(), "python {args:?} failed");
}

/// A fixture generator under tests/fixtures/.
pub fn fixture(name: &str) -> std::ffi::OsString {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .into_os_string()
}

/// The tensor named `name` among named tensors (a state dict or a fixture file's contents).
pub fn entry(tensors: &[(String, tch::Tensor)], name: &str) -> tch::Tensor {
    tensors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.shallow_clone())
        .unwrap_or_else(|| panic!("no tensor named {name}"))
}
