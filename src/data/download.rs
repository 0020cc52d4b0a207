//! Downloads with a progress bar, checksum verification and atomic writes; offline, a clear
//! message saying where to put the file by hand.

use super::{DataError, Result, data_dir};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A published checksum.
#[derive(Debug, Clone)]
pub enum Checksum {
    Md5(String),
    /// torchvision publishes the first hex digits of the SHA-256 in each file name.
    Sha256Prefix(String),
}

/// A file that can be fetched: where from, under which name, and how to verify it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    pub file_name: String,
    pub checksum: Checksum,
}

/// The official CIFAR archives (https://www.cs.toronto.edu/~kriz/cifar.html).
pub fn cifar_remote(name: &str) -> Option<Remote> {
    let (file, md5) = match name {
        "cifar10" => ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
        "cifar100" => (
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
        ),
        _ => return None,
    };
    Some(Remote {
        url: format!("https://www.cs.toronto.edu/~kriz/{file}"),
        file_name: file.to_string(),
        checksum: Checksum::Md5(md5.to_string()),
    })
}

/// The archive of `cifar10` / `cifar100` if it is already in the data cache.
pub fn cached_archive(name: &str) -> Option<PathBuf> {
    let remote = cifar_remote(name)?;
    let path = data_dir().join(&remote.file_name);
    path.exists().then_some(path)
}

/// Fetches `remote` into `dir` unless a verified copy is there; returns the file's path.
pub fn fetch(remote: &Remote, dir: &Path, progress: bool) -> Result<PathBuf> {
    let dest = dir.join(&remote.file_name);
    if dest.exists() {
        verify(&dest, &remote.checksum)?;
        return Ok(dest);
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let result = crate::util::atomic_write(&dest, |tmp| -> Result<()> {
        download_to(&remote.url, tmp, progress).map_err(|e| offline_error(remote, &dest, e))?;
        verify(tmp, &remote.checksum)
            .map_err(|e| DataError::Other(format!("{e} (downloaded from {})", remote.url)))
    });
    result.map(|_| dest)
}

fn offline_error(remote: &Remote, dest: &Path, problem: String) -> DataError {
    DataError::Other(format!(
        "could not download {}: {problem}\nIf this machine is offline, download that file elsewhere and put it at {} (it is verified on first use)",
        remote.url,
        dest.display()
    ))
}

fn download_to(url: &str, path: &Path, progress: bool) -> std::result::Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar = crate::util::progress::bytes_bar(total, progress);
    let mut reader = response.body_mut().as_reader();
    let mut file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        bar.inc(n as u64);
    }
    file.sync_all().map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    Ok(())
}

/// Checks a file against its checksum; the error names the file, the expected and the found sum.
pub fn verify(path: &Path, checksum: &Checksum) -> Result<()> {
    let (found, expected, ok) = match checksum {
        Checksum::Md5(want) => {
            let got = hex(&hash_file::<Md5>(path)?);
            let ok = got.eq_ignore_ascii_case(want);
            (got, want.clone(), ok)
        }
        Checksum::Sha256Prefix(want) => {
            let got = hex(&hash_file::<Sha256>(path)?);
            let ok = got.starts_with(&want.to_lowercase());
            (got, format!("{want}..."), ok)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(DataError::format(
            path,
            format!(
                "checksum mismatch: expected {expected}, found {found}; the file is corrupt or incomplete, delete it and download again"
            ),
        ))
    }
}

fn hash_file<D: Digest>(path: &Path) -> Result<Vec<u8>> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_vec())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
