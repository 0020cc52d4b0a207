//! Data-parallel training on PyTorch's own distributed engine (c10d): the launch environment
//! that torchrun, Slurm or a user sets, a TCPStore rendezvous, and a Gloo process group with the
//! collectives training needs, called through a small C++ shim (csrc/c10d_shim.cpp, built by
//! build.rs against the libtorch tch links). The same engine `torch.distributed` runs, so
//! convkit fits the launchers and clusters PyTorch users already have.

pub mod launch;

pub use launch::Launch;

use std::ffi::{CString, c_char, c_void};
use std::time::Duration;
use tch::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launch environment is incomplete or inconsistent (names the variable).
    #[error("distributed launch: {0}")]
    Launch(String),
    /// The rendezvous at MASTER_ADDR:MASTER_PORT did not complete.
    #[error(
        "distributed rendezvous at {address} (rank {rank} of {world}) failed: {message}. Check \
         that MASTER_ADDR/MASTER_PORT name the same reachable address for every rank, that \
         every rank was started, and whether rank 0 stopped before it (its own error says why)"
    )]
    Rendezvous {
        address: String,
        rank: usize,
        world: usize,
        message: String,
    },
    /// A collective failed: another rank stopped, or the timeout passed.
    #[error(
        "distributed {op} failed on rank {rank} of {world}: {message} (another rank has probably \
         stopped; its own error says why)"
    )]
    Collective {
        op: &'static str,
        rank: usize,
        world: usize,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, DistError>;

unsafe extern "C" {
    fn convkit_store_new(
        host: *const c_char,
        port: u16,
        world: i32,
        is_server: i32,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn convkit_store_free(store: *mut c_void);
    fn convkit_gloo_new(
        store: *mut c_void,
        prefix: *const c_char,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn convkit_group_free(group: *mut c_void);
    #[cfg(convkit_nccl)]
    fn convkit_nccl_new(
        store: *mut c_void,
        prefix: *const c_char,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        device: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn convkit_allreduce_sum(
        group: *mut c_void,
        tensor: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn convkit_broadcast(
        group: *mut c_void,
        tensor: *mut c_void,
        root: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn convkit_allgather(
        group: *mut c_void,
        output: *mut c_void,
        input: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn convkit_barrier(group: *mut c_void, err: *mut c_char, err_len: usize) -> i32;
    fn convkit_allreduce_sum_autograd(
        group: *mut c_void,
        tensor: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
}

const ERR_LEN: usize = 2048;

/// (store, prefix, rank, world, timeout ms, CUDA device, error buffer, its length).
type NewGroup = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    i32,
    i32,
    i64,
    i32,
    *mut c_char,
    usize,
) -> *mut c_void;

/// Gloo needs no device: the shim's constructor under NewGroup's signature.
unsafe extern "C" fn gloo_group(
    store: *mut c_void,
    prefix: *const c_char,
    rank: i32,
    world: i32,
    timeout_ms: i64,
    _device: i32,
    err: *mut c_char,
    err_len: usize,
) -> *mut c_void {
    // SAFETY: the arguments are passed through unchanged from ProcessGroup::init.
    unsafe { convkit_gloo_new(store, prefix, rank, world, timeout_ms, err, err_len) }
}

#[cfg(convkit_nccl)]
fn nccl_constructor() -> std::result::Result<NewGroup, String> {
    Ok(convkit_nccl_new)
}

#[cfg(not(convkit_nccl))]
fn nccl_constructor() -> std::result::Result<NewGroup, String> {
    Err(
        "this convkit was built without NCCL (its libtorch has no CUDA, or NCCL's and CUDA's \
         headers were missing at build time: run scripts/setup.sh, then cargo build); use the \
         Gloo backend (dist.backend = gloo)"
            .into(),
    )
}

fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    // c10d's messages carry a C++ backtrace after the first line.
    String::from_utf8_lossy(&buf[..end])
        .lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_string()
}

/// The collective library under the process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors (and CUDA tensors through host copies).
    Gloo,
    /// NCCL: CUDA tensors, one GPU per rank.
    Nccl,
}

impl Backend {
    /// Whether this binary was built with NCCL (a CUDA libtorch with NCCL's headers beside it).
    pub const NCCL_BUILT: bool = cfg!(convkit_nccl);

    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "Gloo",
            Backend::Nccl => "NCCL",
        }
    }
}

/// A process group of `world` ranks, this process being `rank`.
pub struct ProcessGroup {
    store: *mut c_void,
    group: *mut c_void,
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub backend: Backend,
    /// Where this group's tensors live: the CPU for Gloo, this rank's GPU for NCCL.
    pub device: tch::Device,
}

impl ProcessGroup {
    /// Joins the rendezvous `launch` describes and builds the process group. Rank 0 hosts the
    /// TCPStore unless torchrun's agent already does (`TORCHELASTIC_USE_AGENT_STORE`).
    ///
    /// # Errors
    /// The store cannot be reached or hosted within `timeout`, or the group cannot form.
    pub fn init(launch: &Launch, timeout: Duration, backend: Backend) -> Result<Self> {
        let host = CString::new(launch.master_addr.as_str())
            .map_err(|_| DistError::Launch("MASTER_ADDR holds a NUL byte".into()))?;
        let ms = timeout.as_millis() as i64;
        let rendezvous = |message: String| DistError::Rendezvous {
            address: format!("{}:{}", launch.master_addr, launch.master_port),
            rank: launch.rank,
            world: launch.world,
            message,
        };
        let mut err = vec![0u8; ERR_LEN];
        let is_server = launch.rank == 0 && !launch.agent_store;
        // SAFETY: the shim copies the host string and writes at most ERR_LEN bytes into err.
        let store = unsafe {
            convkit_store_new(
                host.as_ptr(),
                launch.master_port,
                launch.world as i32,
                is_server as i32,
                ms,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if store.is_null() {
            return Err(rendezvous(message(&err)));
        }
        // A torchrun restart reuses the agent's store: each attempt meets under its own keys.
        let prefix = CString::new(format!("convkit/{}", launch.restart)).expect("no NUL");
        let (new_group, device) = match backend {
            Backend::Gloo => (gloo_group as NewGroup, tch::Device::Cpu),
            Backend::Nccl => (
                nccl_constructor().map_err(DistError::Launch)?,
                tch::Device::Cuda(local_gpu(launch.local_rank)),
            ),
        };
        let gpu = match device {
            tch::Device::Cuda(i) => i as i32,
            _ => -1,
        };
        // SAFETY: store is a live handle from convkit_store_new.
        let group = unsafe {
            new_group(
                store,
                prefix.as_ptr(),
                launch.rank as i32,
                launch.world as i32,
                ms,
                gpu,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if group.is_null() {
            // SAFETY: store is live and no group refers to it.
            unsafe { convkit_store_free(store) };
            return Err(rendezvous(message(&err)));
        }
        Ok(ProcessGroup {
            store,
            group,
            rank: launch.rank,
            world: launch.world,
            local_rank: launch.local_rank,
            backend,
            device,
        })
    }

    fn check(&self, op: &'static str, code: i32, err: &[u8]) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        Err(DistError::Collective {
            op,
            rank: self.rank,
            world: self.world,
            message: message(err),
        })
    }

    /// Sums a contiguous tensor across ranks, in place.
    ///
    /// # Errors
    /// Another rank stopped or the timeout passed.
    pub fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<()> {
        let mut err = vec![0u8; ERR_LEN];
        // SAFETY: the tensor pointer is tch's at::Tensor*, alive for the call.
        let code = unsafe {
            convkit_allreduce_sum(
                self.group,
                tensor.as_mut_ptr().cast(),
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        self.check("all-reduce", code, &err)
    }

    /// Overwrites `tensor` on every rank with rank `root`'s.
    ///
    /// # Errors
    /// Another rank stopped or the timeout passed.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let mut err = vec![0u8; ERR_LEN];
        // SAFETY: as in all_reduce_sum.
        let code = unsafe {
            convkit_broadcast(
                self.group,
                tensor.as_mut_ptr().cast(),
                root as i32,
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        self.check("broadcast", code, &err)
    }

    /// Every rank's `input` `[n, ...]`, concatenated in rank order: `[world * n, ...]`. No
    /// gradient flows through it.
    ///
    /// # Errors
    /// Another rank stopped or the timeout passed.
    pub fn all_gather(&self, input: &Tensor) -> Result<Tensor> {
        let mut input = input.detach().contiguous();
        let mut size = input.size();
        size[0] *= self.world as i64;
        let mut output = Tensor::empty(size.as_slice(), (input.kind(), input.device()));
        let mut err = vec![0u8; ERR_LEN];
        // SAFETY: both pointers are live at::Tensor* for the call; output is contiguous.
        let code = unsafe {
            convkit_allgather(
                self.group,
                output.as_mut_ptr().cast(),
                input.as_mut_ptr().cast(),
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        self.check("all-gather", code, &err)?;
        Ok(output)
    }

    /// The sum of `tensor` over the ranks as a new tensor that autograd differentiates: in
    /// backward the gradient reaching it is summed over the ranks too (what PyTorch's
    /// SyncBatchNorm does for its statistics). Every rank must run the same forward and
    /// backward passes through it.
    ///
    /// # Errors
    /// Another rank stopped or the timeout passed (in the forward pass; a failure in backward
    /// surfaces as the backward pass's error).
    pub fn all_reduce_sum_differentiable(&self, tensor: &Tensor) -> Result<Tensor> {
        let mut err = vec![0u8; ERR_LEN];
        let mut input = tensor.shallow_clone();
        // SAFETY: the input pointer is a live at::Tensor*; the shim returns a new heap
        // at::Tensor* (or NULL), whose ownership passes to tch.
        let out = unsafe {
            convkit_allreduce_sum_autograd(
                self.group,
                input.as_mut_ptr().cast(),
                err.as_mut_ptr().cast(),
                ERR_LEN,
            )
        };
        if out.is_null() {
            self.check("all-reduce", 1, &err)?;
        }
        // SAFETY: out is a fresh at::Tensor* owned by nobody else.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }

    /// Waits until every rank arrives.
    ///
    /// # Errors
    /// Another rank stopped or the timeout passed.
    pub fn barrier(&self) -> Result<()> {
        let mut err = vec![0u8; ERR_LEN];
        // SAFETY: the group handle is live.
        let code = unsafe { convkit_barrier(self.group, err.as_mut_ptr().cast(), ERR_LEN) };
        self.check("barrier", code, &err)
    }

    /// Sums f64 values across ranks (host values through a CPU tensor).
    ///
    /// # Errors
    /// As [`ProcessGroup::all_reduce_sum`].
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        let mut t = Tensor::from_slice(values).to_device(self.device);
        self.all_reduce_sum(&mut t)?;
        Ok(Vec::<f64>::try_from(t.to_device(tch::Device::Cpu)).expect("a 1-D f64 tensor"))
    }

    /// Whether this process is rank 0, the one that writes files and logs.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: both handles are live and freed once; the group before the store it uses.
        unsafe {
            convkit_group_free(self.group);
            convkit_store_free(self.store);
        }
    }
}

/// Gradients are reduced in flat buckets of at most this many bytes (DDP's default bucket cap).
pub const BUCKET_BYTES: usize = 25 << 20;

impl ProcessGroup {
    /// Replaces each defined gradient of `params` by its mean over the ranks, reducing them in
    /// flat float buckets of at most [`BUCKET_BYTES`] (one all-reduce per bucket, as DDP's
    /// Reducer). Every rank must pass the same parameters in the same order.
    ///
    /// # Errors
    /// As [`ProcessGroup::all_reduce_sum`].
    pub fn average_gradients(&self, params: &[Tensor]) -> Result<()> {
        let grads: Vec<Tensor> = params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        for bucket in buckets(&grads) {
            let mut flat = Tensor::cat(
                &bucket.iter().map(|g| g.flatten(0, -1)).collect::<Vec<_>>(),
                0,
            );
            self.all_reduce_sum(&mut flat)?;
            let flat = flat / self.world as f64;
            let mut at = 0;
            tch::no_grad(|| {
                for g in bucket {
                    let n = g.numel() as i64;
                    let mut g = g.shallow_clone();
                    g.copy_(&flat.narrow(0, at, n).view_as(&g));
                    at += n;
                }
            });
        }
        Ok(())
    }

    /// Copies rank 0's values of the named tensors (a model's variables, in any order: they
    /// are matched by name) to every rank, in one flat buffer per dtype.
    ///
    /// # Errors
    /// As [`ProcessGroup::broadcast`].
    pub fn broadcast_from_main(&self, named: &[(String, Tensor)]) -> Result<()> {
        let mut sorted: Vec<&(String, Tensor)> = named.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors: Vec<Tensor> = sorted.iter().map(|(_, t)| t.shallow_clone()).collect();
        let mut kinds: Vec<tch::Kind> = tensors.iter().map(Tensor::kind).collect();
        kinds.dedup();
        kinds.sort_by_key(|k| format!("{k:?}"));
        kinds.dedup();
        for kind in kinds {
            let same: Vec<&Tensor> = tensors.iter().filter(|t| t.kind() == kind).collect();
            let mut flat = Tensor::cat(
                &same
                    .iter()
                    .map(|t| t.detach().flatten(0, -1))
                    .collect::<Vec<_>>(),
                0,
            );
            self.broadcast(&mut flat, 0)?;
            let mut at = 0;
            tch::no_grad(|| {
                for t in same {
                    let n = t.numel() as i64;
                    t.shallow_clone().copy_(&flat.narrow(0, at, n).view_as(t));
                    at += n;
                }
            });
        }
        Ok(())
    }
}

/// Consecutive groups of `tensors` of at most [`BUCKET_BYTES`] each (a larger tensor alone).
fn buckets(tensors: &[Tensor]) -> Vec<&[Tensor]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        if i > start && bytes + size > BUCKET_BYTES {
            out.push(&tensors[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < tensors.len() {
        out.push(&tensors[start..]);
    }
    out
}

/// This rank's part of an epoch's order, as PyTorch's `DistributedSampler`: the order is padded
/// with its own first entries to a multiple of `world`, and rank `r` takes entries r, r + world,
/// ..., so every image is seen once per epoch across the ranks and the shards are equal.
pub fn shard(order: &[i64], rank: usize, world: usize) -> Vec<i64> {
    let total = order.len().div_ceil(world) * world;
    (rank..total)
        .step_by(world)
        .map(|i| order[i % order.len()])
        .collect()
}

/// Indices `rank, rank + world, ...` below `n`: this rank's part of an evaluation, without
/// padding, so the parts add up to the whole split exactly once.
pub fn eval_shard(n: usize, rank: usize, world: usize) -> Vec<i64> {
    (rank..n).step_by(world).map(|i| i as i64).collect()
}

thread_local! {
    static GROUP: std::cell::OnceCell<Option<std::rc::Rc<ProcessGroup>>> =
        const { std::cell::OnceCell::new() };
}

/// The process group of this process's launch, formed on first use and kept for the process's
/// life (every training run of the process shares it); `None` for a single process.
///
/// # Errors
/// As [`Launch::from_env`] and [`ProcessGroup::init`].
pub fn global(timeout: Duration, backend: Backend) -> Result<Option<std::rc::Rc<ProcessGroup>>> {
    if let Some(g) = GROUP.with(|g| g.get().cloned()) {
        return Ok(g);
    }
    let group = match Launch::from_env()? {
        Some(launch) => Some(std::rc::Rc::new(ProcessGroup::init(
            &launch, timeout, backend,
        )?)),
        None => None,
    };
    GROUP.with(|g| {
        let _ = g.set(group.clone());
    });
    Ok(group)
}

/// This rank's GPU: LOCAL_RANK, wrapped when each process sees fewer GPUs (Slurm's
/// `--gpus-per-task 1` shows every task its one GPU as device 0).
pub fn local_gpu(local_rank: usize) -> usize {
    let visible = tch::Cuda::device_count().max(1) as usize;
    local_rank % visible
}

/// Whether this process writes files and logs: a single process, or rank 0 of a launch.
pub fn is_main() -> bool {
    Launch::from_env()
        .ok()
        .flatten()
        .is_none_or(|l| l.rank == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_image_once_and_are_equal() {
        let order: Vec<i64> = vec![4, 0, 3, 1, 2];
        let a = shard(&order, 0, 2);
        let b = shard(&order, 1, 2);
        assert_eq!(a, [4, 3, 2]);
        assert_eq!(b, [0, 1, 4]);
        assert_eq!(eval_shard(5, 0, 2), [0, 2, 4]);
        assert_eq!(eval_shard(5, 1, 2), [1, 3]);
    }

    #[test]
    fn buckets_respect_the_cap() {
        let small = Tensor::zeros([1000], (tch::Kind::Float, tch::Device::Cpu));
        let big = Tensor::zeros(
            [(BUCKET_BYTES / 4 + 1) as i64],
            (tch::Kind::Float, tch::Device::Cpu),
        );
        let ts = [small.shallow_clone(), big, small.shallow_clone(), small];
        let sizes: Vec<usize> = buckets(&ts).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1, 1, 2]);
    }
}
