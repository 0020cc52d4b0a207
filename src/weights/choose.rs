//! Finding the state dict inside a training checkpoint.
//!
//! Training scripts nest the weights (`{'net': sd, 'acc': ..}`, `{'state_dict': sd,
//! 'optimizer': ..}`, `model`, `model_ema`, `student` / `teacher`, ...) and prefix their names
//! (`module.` from `DataParallel` / `DistributedDataParallel`, `_orig_mod.` from
//! `torch.compile`, `module.encoder_q.` from MoCo, `backbone.`, `encoder.`, ...). Rather than a
//! table of known keys and prefixes, every group of tensors in the file is tried with every
//! leading dotted prefix its own names share, and scored by how many of the model's variables
//! it provides with the right shape after the prefix is removed. The best one wins (ties go to
//! the group that comes first in the file, then the prefix met first); tensors under other
//! prefixes (a projection head, `head.*`) are simply unexpected when loading.

use super::{Contents, Result, bad, key_name};
use std::collections::HashMap;
use tch::Tensor;

/// What [`choose`] picked.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Choice {
    /// The group's key path (empty: the file's top level).
    pub key: String,
    /// The prefix removed from every name (empty: none).
    pub prefix: String,
    /// How many of the model's variables the group provides with the right shape.
    pub fit: usize,
    /// How many variables the model has (`num_batches_tracked` not counted).
    pub wanted: usize,
    /// How many tensors the group holds.
    pub in_group: usize,
    /// How many of them lie outside the prefix and are left out.
    pub outside_prefix: usize,
}

impl Choice {
    /// One line for the user: `weights: using 'state_dict' from f.pth, prefix 'module.'
    /// stripped (62 of 62 tensors fit)`.
    pub fn describe(&self, file: &std::path::Path) -> String {
        let name = file
            .file_name()
            .unwrap_or(file.as_os_str())
            .to_string_lossy();
        let what = if self.key.is_empty() {
            "the top-level tensors".to_string()
        } else {
            format!("'{}'", self.key)
        };
        let prefix = match (self.prefix.is_empty(), self.outside_prefix) {
            (true, _) => String::new(),
            (false, 0) => format!(", prefix '{}' stripped", self.prefix),
            (false, n) => format!(
                ", prefix '{}' stripped, {n} tensors outside it left out",
                self.prefix
            ),
        };
        format!(
            "weights: using {what} from {name}{prefix} ({} of {} tensors fit)",
            self.fit, self.wanted
        )
    }
}

fn ignored(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

/// Every leading dotted prefix shared by at least two names (or by the only name), up to six
/// components deep (`module.`, `module.encoder_q.`, ...), after the empty prefix, in the order
/// they first appear (so MoCo's `encoder_q`, saved first, wins a tie with `encoder_k`).
fn prefixes(names: &[&str]) -> Vec<String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    let mut order = vec![];
    for n in names {
        for (i, _) in n.match_indices('.').take(6) {
            let c = count.entry(&n[..=i]).or_default();
            if *c == 0 {
                order.push(&n[..=i]);
            }
            *c += 1;
        }
    }
    let min = if names.len() > 1 { 2 } else { 1 };
    std::iter::once(String::new())
        .chain(
            order
                .into_iter()
                .filter(|p| count[p] >= min)
                .map(str::to_string),
        )
        .collect()
}

/// A few names, for messages.
fn some(names: impl Iterator<Item = String>, n: usize) -> String {
    let all: Vec<String> = names.collect();
    let mut s = all.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if all.len() > n {
        s.push_str(&format!(", ... ({} in all)", all.len()));
    }
    s
}

/// Picks the group of tensors and the prefix that fit a model, and returns its tensors with
/// the prefix removed (tensors outside the prefix keep their names, so loading reports them as
/// unexpected).
///
/// `model` lists the model's variables and shapes (its state-dict names). `key` (a
/// `/`-separated key path, `--weights-key`) and `strip` (`--strip-prefix`) override the search.
///
/// # Errors
/// `key` names no group of tensors (a placeholder object there is named, and refused); `strip`
/// is a prefix of none of the group's names; or no group provides any of the model's variables
/// (the message lists a few names of each group beside a few of the model's).
pub fn choose(
    contents: &Contents,
    model: &[(String, Vec<i64>)],
    key: Option<&str>,
    strip: Option<&str>,
) -> Result<(Vec<(String, Tensor)>, Choice)> {
    let path = &contents.path;
    let model: Vec<&(String, Vec<i64>)> = model.iter().filter(|(n, _)| !ignored(n)).collect();
    let groups: Vec<usize> = match key.map(|k| k.trim_matches('/')) {
        None => (0..contents.groups.len()).collect(),
        Some(k) => {
            let found: Vec<usize> = (0..contents.groups.len())
                .filter(|&i| contents.groups[i].key == k)
                .collect();
            if found.is_empty() {
                let there = contents.others.iter().find(|(p, _)| p == k);
                let listed = some(contents.groups.iter().map(|g| key_name(&g.key)), 8);
                return Err(bad(
                    path,
                    match there {
                        Some((_, d)) if d.ends_with(" object") => format!(
                            "refused: --weights-key '{k}' is {d}, not a dict of tensors (it was \
                             not imported or run); dicts of tensors in the file: {listed}"
                        ),
                        Some((_, d)) => format!(
                            "--weights-key '{k}' is {d}, not a dict of tensors; dicts of tensors \
                             in the file: {listed}"
                        ),
                        None => format!(
                            "--weights-key '{k}' is not in the file; dicts of tensors in the \
                             file: {listed}"
                        ),
                    },
                ));
            }
            found
        }
    };
    let mut best: Option<(Choice, usize)> = None;
    for &gi in &groups {
        let g = &contents.groups[gi];
        let shapes: HashMap<&str, Vec<i64>> = g
            .tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.size()))
            .collect();
        let names: Vec<&str> = g
            .tensors
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !ignored(n))
            .collect();
        let candidates = match strip {
            Some(p) => {
                if !names.iter().any(|n| n.starts_with(p)) {
                    if key.is_none() {
                        continue;
                    }
                    return Err(bad(
                        path,
                        format!(
                            "--strip-prefix '{p}': no name in {} starts with it (names: {})",
                            key_name(&g.key),
                            some(names.iter().map(|s| s.to_string()), 4)
                        ),
                    ));
                }
                vec![p.to_string()]
            }
            None => prefixes(&names),
        };
        for prefix in candidates {
            let fit = model
                .iter()
                .filter(|(n, shape)| shapes.get(format!("{prefix}{n}").as_str()) == Some(shape))
                .count();
            let better = match &best {
                None => true,
                Some((b, _)) => fit > b.fit,
            };
            if better {
                let choice = Choice {
                    key: g.key.clone(),
                    prefix,
                    fit,
                    wanted: model.len(),
                    in_group: names.len(),
                    outside_prefix: 0,
                };
                best = Some((choice, gi));
            }
        }
    }
    let Some((mut choice, gi)) = best.filter(|(c, _)| c.fit > 0 || model.is_empty()) else {
        let files = some(
            groups.iter().map(|&i| {
                let g = &contents.groups[i];
                format!(
                    "{} ({} tensors: {})",
                    key_name(&g.key),
                    g.tensors.len(),
                    some(g.tensors.iter().map(|(n, _)| n.clone()), 3)
                )
            }),
            4,
        );
        return Err(bad(
            path,
            format!(
                "no tensors in the file fit the model{}; the file has {files}; the model \
                 expects {}; choose with --weights-key PATH and --strip-prefix P",
                strip
                    .map(|p| format!(" after stripping '{p}'"))
                    .unwrap_or_default(),
                some(model.iter().map(|(n, _)| n.clone()), 4)
            ),
        ));
    };
    // Under a prefix, the tensors outside it belong to other networks in the same file (MoCo's
    // key encoder and queue, a teacher): they are left out, and counted.
    let group = &contents.groups[gi].tensors;
    let tensors: Vec<(String, Tensor)> = group
        .iter()
        .filter_map(|(n, t)| {
            let name = n.strip_prefix(&choice.prefix)?;
            Some((name.to_string(), t.shallow_clone()))
        })
        .collect();
    choice.outside_prefix = group.len() - tensors.len();
    Ok((tensors, choice))
}
