//! Who this process is in a data-parallel job, from the environment the launcher set: torchrun
//! and plain launches (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, as
//! `torch.distributed`'s `env://` reads them) or Slurm's `srun` (SLURM_PROCID,
//! SLURM_STEP_NUM_TASKS, SLURM_LOCALID and the first host of the step's node list).

use super::{DistError, Result};

/// torchrun's and PyTorch's default rendezvous port.
pub const DEFAULT_PORT: u16 = 29500;

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    /// Rank on this machine (the GPU index on CUDA).
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the TCPStore already (`TORCHELASTIC_USE_AGENT_STORE=True`): every
    /// rank connects as a client.
    pub agent_store: bool,
    /// Which launcher's variables were read, for messages.
    pub source: &'static str,
    /// torchrun's restart attempt (TORCHELASTIC_RESTART_COUNT), 0 otherwise.
    pub restart: usize,
}

impl Launch {
    /// The launch described by the process environment; `None` for a single process (no
    /// WORLD_SIZE, WORLD_SIZE=1 without MASTER_ADDR, no srun step, or a step of one task).
    ///
    /// # Errors
    /// A variable that does not parse, a rank outside the world, or a world of several ranks
    /// without the address to meet at.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] over any variable lookup (tests).
    ///
    /// # Errors
    /// As [`Launch::from_env`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        if var("WORLD_SIZE").is_some() {
            return Self::torch_env(&var);
        }
        // SLURM_STEP_NUM_TASKS is set by srun for the tasks of a step; an sbatch script itself
        // also has SLURM_NTASKS and SLURM_PROCID=0, but no ranks to meet.
        if var("SLURM_STEP_NUM_TASKS").is_some() && var("SLURM_PROCID").is_some() {
            return Self::slurm(&var);
        }
        Ok(None)
    }

    fn torch_env(var: &impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let world: usize = number(var, "WORLD_SIZE")?;
        // One rank forms a group only when a launcher set it up (torchrun sets MASTER_ADDR):
        // that runs the data-parallel path, collectives included, on a single GPU.
        if world == 0 || (world == 1 && var("MASTER_ADDR").is_none()) {
            return Ok(None);
        }
        let rank = number(var, "RANK")?;
        let local_rank = var("LOCAL_RANK").map_or(Ok(rank), |_| number(var, "LOCAL_RANK"))?;
        let launch = Launch {
            rank,
            world,
            local_rank,
            master_addr: var("MASTER_ADDR").ok_or_else(|| {
                DistError::Launch(format!(
                    "WORLD_SIZE={world} but MASTER_ADDR is not set (the host rank 0 runs on)"
                ))
            })?,
            master_port: port(var)?,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            source: "torchrun / environment",
            restart: var("TORCHELASTIC_RESTART_COUNT")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        };
        launch.check()
    }

    fn slurm(var: &impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let world: usize = number(var, "SLURM_STEP_NUM_TASKS")?;
        if world <= 1 {
            return Ok(None);
        }
        let rank = number(var, "SLURM_PROCID")?;
        let local_rank = var("SLURM_LOCALID").map_or(Ok(0), |_| number(var, "SLURM_LOCALID"))?;
        let master_addr = match var("MASTER_ADDR") {
            Some(a) => a,
            None => {
                let list = var("SLURM_STEP_NODELIST")
                    .or_else(|| var("SLURM_JOB_NODELIST"))
                    .or_else(|| var("SLURM_NODELIST"))
                    .ok_or_else(|| {
                        DistError::Launch(
                            "Slurm launch without SLURM_JOB_NODELIST or MASTER_ADDR".into(),
                        )
                    })?;
                first_host(&list).ok_or_else(|| {
                    DistError::Launch(format!("SLURM_JOB_NODELIST '{list}': no host in it"))
                })?
            }
        };
        let launch = Launch {
            rank,
            world,
            local_rank,
            master_addr,
            master_port: port(var)?,
            agent_store: false,
            source: "Slurm",
            restart: 0,
        };
        launch.check()
    }

    fn check(self) -> Result<Option<Self>> {
        if self.rank >= self.world {
            return Err(DistError::Launch(format!(
                "rank {} is outside a world of {} ({})",
                self.rank, self.world, self.source
            )));
        }
        Ok(Some(self))
    }
}

fn number(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<usize> {
    let text = var(name).ok_or_else(|| DistError::Launch(format!("{name} is not set")))?;
    text.trim()
        .parse()
        .map_err(|_| DistError::Launch(format!("{name}='{text}' is not a number")))
}

fn port(var: &impl Fn(&str) -> Option<String>) -> Result<u16> {
    match var("MASTER_PORT") {
        None => Ok(DEFAULT_PORT),
        Some(p) => p.trim().parse().map_err(|_| {
            DistError::Launch(format!("MASTER_PORT='{p}' is not a port number (1-65535)"))
        }),
    }
}

/// The first host of a Slurm node list: `node[03-05,07],gpu1` -> `node03` (zero padding kept).
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list
        .char_indices()
        .scan(0i32, |depth, (i, c)| {
            match c {
                '[' => *depth += 1,
                ']' => *depth -= 1,
                _ => {}
            }
            Some((i, c, *depth))
        })
        .find(|(_, c, depth)| *c == ',' && *depth == 0)
        .map_or(list.len(), |(i, _, _)| i);
    let first = &list[..end];
    let host = match first.split_once('[') {
        None => first.to_string(),
        Some((prefix, rest)) => {
            let range = rest.trim_end_matches(']');
            let first_range = range.split(',').next()?;
            let start = first_range.split('-').next()?;
            format!("{prefix}{start}")
        }
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn torchrun_slurm_and_single_process() {
        let l = Launch::from_vars(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29600"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (2, 4, 0));
        assert_eq!((l.master_addr.as_str(), l.master_port), ("10.0.0.1", 29600));
        assert!(l.agent_store);
        let s = Launch::from_vars(env(&[
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_PROCID", "5"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-08],cpu1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((s.rank, s.world, s.local_rank), (5, 8, 1));
        assert_eq!(
            (s.master_addr.as_str(), s.master_port),
            ("gpu07", DEFAULT_PORT)
        );
        assert_eq!(
            Launch::from_vars(env(&[("WORLD_SIZE", "1")])).unwrap(),
            None
        );
        // An sbatch script outside srun: no step, no ranks to wait for.
        let batch = env(&[("SLURM_NTASKS", "8"), ("SLURM_PROCID", "0")]);
        assert_eq!(Launch::from_vars(batch).unwrap(), None);
        assert_eq!(Launch::from_vars(env(&[])).unwrap(), None);
    }

    #[test]
    fn bad_launches_name_the_variable() {
        let err = |pairs: &[(&str, &str)]| Launch::from_vars(env(pairs)).unwrap_err().to_string();
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "0")]).contains("MASTER_ADDR"));
        assert!(err(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE='two'"));
        let e = err(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h")]);
        assert!(e.contains("rank 2 is outside a world of 2"), "{e}");
        let e = err(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "99999"),
        ]);
        assert!(e.contains("MASTER_PORT='99999'"), "{e}");
    }

    #[test]
    fn first_host_of_slurm_node_lists() {
        assert_eq!(first_host("node01").as_deref(), Some("node01"));
        assert_eq!(first_host("node[03-05,07],gpu1").as_deref(), Some("node03"));
        assert_eq!(first_host("a[1,3],b[2-4]").as_deref(), Some("a1"));
        assert_eq!(first_host("").as_deref(), None);
    }
}
