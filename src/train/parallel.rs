//! What the engine does differently in a data-parallel run (PyTorch DDP's semantics): the
//! process group, each rank's device, the settings that must agree with the launch, and the
//! evaluation of each rank's part of the test split added up.

use super::objective::Evaluation;
use crate::config::{Config, DistBackend};
use crate::dist::{Backend, ProcessGroup};
use crate::error::{Error, Result};
use crate::metrics::Confusion;
use std::rc::Rc;
use std::time::Duration;

/// The launch's process group (formed on first use), or None in one process.
///
/// # Errors
/// The launch environment is incomplete, or the rendezvous fails within `dist.timeout_s`.
pub fn dist_group(cfg: &Config) -> Result<Option<Rc<ProcessGroup>>> {
    let timeout = Duration::from_secs(cfg.dist.timeout_s);
    let backend = backend(cfg);
    if backend == Backend::Nccl && !wants_gpu(&cfg.train.device) {
        return Err(Error::Invalid(format!(
            "dist.backend = nccl needs a GPU per rank, but train.device is {}; on the CPU use \
             dist.backend = gloo (or auto)",
            cfg.train.device
        )));
    }
    Ok(crate::dist::global(timeout, backend)?)
}

/// Whether a device setting asks for a GPU (`auto` when libtorch sees one).
fn wants_gpu(device: &str) -> bool {
    matches!(device, "cuda" | "gpu")
        || device.starts_with("cuda:")
        || (device == "auto" && tch::Cuda::is_available())
}

/// `dist.backend`, with `auto` as PyTorch chooses: NCCL when the run uses a GPU and this binary
/// has NCCL, else Gloo.
pub fn backend(cfg: &Config) -> Backend {
    let gpu = wants_gpu(&cfg.train.device);
    match cfg.dist.backend {
        DistBackend::Gloo => Backend::Gloo,
        DistBackend::Nccl => Backend::Nccl,
        DistBackend::Auto if gpu && Backend::NCCL_BUILT => Backend::Nccl,
        DistBackend::Auto => Backend::Gloo,
    }
}

/// Each rank trains on its own GPU, `cuda:LOCAL_RANK` (wrapped to the GPUs it sees), whenever
/// the config asks for a GPU, `cuda:N` included (a resumed run's config names rank 0's).
pub fn rank_device(device: &str, local_rank: usize) -> String {
    match wants_gpu(device) {
        true => format!("cuda:{}", crate::dist::local_gpu(local_rank)),
        false => device.to_string(),
    }
}

/// Refuses what a data-parallel run cannot do as asked.
///
/// # Errors
/// A global batch that does not split evenly over the ranks.
pub fn check_data_parallel(cfg: &Config, g: &ProcessGroup) -> Result<()> {
    let bs = cfg.train.batch_size;
    if !bs.is_multiple_of(g.world) || bs / g.world < 2 {
        return Err(Error::Invalid(format!(
            "train.batch_size = {bs} is the global batch of a run on {} ranks: it must split \
             into equal per-rank batches of at least 2 (for example {})",
            g.world,
            (bs / g.world).max(2) * g.world
        )));
    }
    Ok(())
}

/// The evaluation of the whole test split from each rank's evaluation of its part: losses,
/// top-5 hits and the confusion matrix added up, accuracy from the summed matrix (exactly one
/// process's number).
///
/// # Errors
/// A collective failed.
pub fn add_up(part: Evaluation, g: &ProcessGroup) -> Result<Evaluation> {
    let Some(d) = part.detail else {
        return Ok(part);
    };
    let n = d.confusion.total() as f64;
    let classes = d.confusion.counts.len();
    let mut values = vec![d.loss * n, (d.top5 * n).round(), n];
    values.extend(d.confusion.counts.iter().flatten().map(|&c| c as f64));
    let total = g.sum_f64(&values)?;
    let n = total[2].max(1.0);
    let counts: Vec<Vec<i64>> = total[3..]
        .chunks(classes)
        .map(|row| row.iter().map(|&c| c.round() as i64).collect())
        .collect();
    let confusion = Confusion { counts };
    let detail = crate::train::EvalResult {
        loss: total[0] / n,
        accuracy: confusion.accuracy(),
        top5: total[1] / n,
        confusion,
    };
    Ok(Evaluation {
        loss: Some(detail.loss),
        accuracy: Some(detail.accuracy),
        top5: Some(detail.top5),
        knn_accuracy: part.knn_accuracy,
        detail: Some(detail),
    })
}

/// Refuses a command that runs in one process when a launcher started several.
///
/// # Errors
/// The environment describes a data-parallel launch.
pub fn refuse_launch(what: &str) -> Result<()> {
    match crate::dist::Launch::from_env()? {
        Some(l) => Err(Error::Invalid(format!(
            "{what} runs in one process, but {} started rank {} of {}: run it without \
             torchrun or srun",
            l.source, l.rank, l.world
        ))),
        None => Ok(()),
    }
}
