//! Small helpers shared by several modules.

pub mod progress;

use std::path::{Path, PathBuf};

/// Writes a file atomically: `write` fills a temporary file beside `path`, which is then renamed
/// over `path`, so a crash never leaves a half-written file under the final name.
pub fn atomic_write<E, F>(path: &Path, write: F) -> Result<(), E>
where
    F: FnOnce(&Path) -> Result<(), E>,
    E: From<std::io::Error>,
{
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    let tmp = temp_sibling(path);
    let result = write(&tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        named(path, e)
    })?;
    Ok(())
}

/// `atomic_write` for bytes already in memory.
pub fn atomic_write_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic_write(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| named(path, e))
    })
}

/// An io error that names its path once, in words (`runs/x: Read-only file system (os error
/// 30)`), keeping its kind; the source is not chained, so it prints once.
pub fn named(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// `create_dir_all` whose error names the folder.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| named(dir, e))
}

/// `.<stem>.<pid>.tmp.<ext>` beside `path`: hidden, owned by this process, and keeping the
/// extension (image encoders choose the format by it).
fn temp_sibling(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{stem}.{}.tmp{ext}", std::process::id()))
}

/// An exclusive claim on a run folder: `<dir>/.lock` holds the writer's process id while it
/// runs and is removed when the lock is dropped. A second writer is refused with the holder's
/// id; a lock whose process is gone (a killed run) is taken over.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Claims `dir` (created if needed).
    ///
    /// # Errors
    /// Another live process holds the folder (its id is named), or the lock file cannot be
    /// written (the folder's path is named).
    pub fn acquire(dir: &Path) -> std::io::Result<RunLock> {
        let at_dir = |e: std::io::Error| named(dir, e);
        create_dir(dir)?;
        // A run writes config.toml, checkpoints/ and plots/ into its folder: never into `/`.
        if dir.canonicalize().map_err(at_dir)?.parent().is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: the file-system root cannot be a run folder",
                    dir.display()
                ),
            ));
        }
        let path = dir.join(".lock");
        for _ in 0..2 {
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match created {
                Ok(mut f) => {
                    use std::io::Write;
                    write!(f, "{}", std::process::id()).map_err(at_dir)?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let pid = holder.trim().parse::<u32>().ok();
                    if let Some(pid) = pid.filter(|p| process_alive(*p)) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::ResourceBusy,
                            format!(
                                "{}: in use by process {pid} (it holds {}); wait for that run to \
                                 end, or choose another --out",
                                dir.display(),
                                path.display()
                            ),
                        ));
                    }
                    // The holder was killed: its lock is stale.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(at_dir(e)),
            }
        }
        Err(std::io::Error::other(format!(
            "{}: cannot take the run folder's lock",
            dir.display()
        )))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this id exists (read from /proc; assumed alive without /proc).
fn process_alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the temporary files [`atomic_write`] left in `dir` when a process was killed while
/// writing (their process is gone); the files of a live writer are kept. Returns how many were
/// removed.
pub fn clean_stale_temps(dir: &Path) -> usize {
    // Whether a process lives is read from /proc; without it nothing is removed.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = temp_owner(&name) else {
            continue;
        };
        if !process_alive(pid) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The process id in a name [`temp_sibling`] made (`.last.1234.tmp.safetensors`), or in the
/// form earlier versions made (`.last.safetensors.1234.tmp`).
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (before, _) = rest.split_once(".tmp")?;
    before.rsplit('.').next()?.parse().ok()
}

/// Stable 64-bit FNV-1a hash, for cache keys that must not change between runs or builds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Mixes a seed with a stream number (epoch, step, worker) into an independent seed.
pub fn mix_seed(seed: u64, stream: u64) -> u64 {
    // SplitMix64 finaliser: nearby inputs give unrelated outputs.
    let mut z = seed
        ^ stream
            .wrapping_mul(0x9e3779b97f4a7c15)
            .wrapping_add(0x632be59bd9b4e019);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// A byte slice as a u8 tensor, and back: lets JSON metadata ride inside safetensors files.
pub fn bytes_tensor(bytes: &[u8]) -> tch::Tensor {
    tch::Tensor::from_slice(bytes)
}

pub fn tensor_bytes(t: &tch::Tensor) -> Vec<u8> {
    Vec::<u8>::try_from(t.to_kind(tch::Kind::Uint8).flatten(0, -1)).unwrap_or_default()
}

/// Human-readable seconds: "42.1 s" or "3 min 05 s".
/// Mean and sample standard deviation (0 for fewer than two values; mean 0 for none).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

pub fn fmt_seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

unsafe extern "C" {
    /// glibc's allocator tuning (malloc.h).
    fn mallopt(param: i32, value: i32) -> i32;
}

/// Keeps large tensor buffers in the heap instead of fresh `mmap`s. glibc serves blocks above
/// its mmap threshold (at most 32 MiB) with new mappings, so every training step on the CPU
/// page-faults and zeroes its large activations again. Measured on the 2-core CPU: the
/// cifar10-fast-cpu net at batch 512 trains 1.4x faster, Net8 at batch 128 1.15x
/// (bench/RESULTS.md). `CONVKIT_NO_MALLOPT=1` turns it off for comparison. Idempotent; glibc only.
pub fn tune_allocator() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    if cfg!(all(target_os = "linux", target_env = "gnu"))
        && std::env::var_os("CONVKIT_NO_MALLOPT").is_none()
    {
        // SAFETY: mallopt only changes allocator parameters; both values are valid for glibc.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// A JSON file parsed as `T`, or None when it is missing or does not parse (a run folder that
/// never finished is treated like an absent one).
pub fn read_json<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Runs `f`, turning a panic into `Err(message)` without printing it: tch reports libtorch
/// errors as panics, which callers turn into errors that name what failed.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    out.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libtorch error".into())
    })
}

/// `1 folder`, `2 folders`.
pub fn plural(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        _ => format!("{n} {what}s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn temp_names_carry_their_owner() {
        let tmp = super::temp_sibling(std::path::Path::new("run/plots/loss.png"));
        let name = tmp.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(name, format!(".loss.{}.tmp.png", std::process::id()));
        assert_eq!(super::temp_owner(&name), Some(std::process::id()));
        assert_eq!(super::temp_owner(".last.safetensors.4242.tmp"), Some(4242));
        assert_eq!(super::temp_owner(".DS_Store"), None);
        assert_eq!(super::temp_owner("loss.png"), None);
    }

    #[test]
    fn mean_and_sample_sd_by_hand() {
        // Mean 5; squared deviations 9 + 1 + 1 + 9 = 20 over n - 1 = 3.
        let (m, sd) = super::mean_sd(&[2.0, 4.0, 6.0, 8.0]);
        assert_eq!(m, 5.0);
        assert!((sd - (20.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(super::mean_sd(&[3.0]), (3.0, 0.0));
    }
}
