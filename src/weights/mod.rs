//! Pretrained weights: reading `torch.save` files (zip and legacy formats, with the safe
//! pickle reader [`crate::pickle`]), `.safetensors` files and convkit checkpoints; finding the
//! state dict inside training checkpoints ([`choose`]); loading it into a model with PyTorch's
//! `load_state_dict` checks; and the official torchvision files to download.

pub mod checkpoint;
pub mod choose;
pub mod pth;
pub mod run_dir;
pub mod torchvision;

pub use run_dir::RunDir;

pub use choose::{Choice, choose};

use crate::data::download::{self, Checksum, Remote};
use crate::models::{Model, is_buffer};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {problem}")]
    Bad { path: PathBuf, problem: String },
    #[error(transparent)]
    Download(#[from] crate::data::DataError),
}

fn bad(path: &Path, problem: impl Into<String>) -> WeightsError {
    WeightsError::Bad {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

pub type Result<T> = std::result::Result<T, WeightsError>;

pub use torchvision::{IMAGENET_MEAN, IMAGENET_STD};

/// What a weights file is, from its first bytes (never from its name alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `torch.save` zip archive.
    Pth,
    /// A bare pickle: `torch.save`'s legacy format (before PyTorch 1.6, or
    /// `_use_new_zipfile_serialization=False`).
    LegacyPth,
    Safetensors,
}

pub fn detect(path: &Path) -> Result<FileKind> {
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path).map_err(|e| bad(path, e.to_string()))?;
    let n = f.read(&mut head).map_err(|e| bad(path, e.to_string()))?;
    // safetensors: a little-endian u64 header length, then the JSON header; a bare pickle:
    // PROTO 2-5 (the length's first byte can also be 0x80, so safetensors is checked first).
    match &head[..n] {
        [b'P', b'K', 3, 4, ..] => Ok(FileKind::Pth),
        [.., b'{'] if n == 9 => Ok(FileKind::Safetensors),
        [0x80, 2..=5, ..] => Ok(FileKind::LegacyPth),
        _ => Err(bad(
            path,
            "not a weights file: expected a torch.save .pth archive or a .safetensors file",
        )),
    }
}

/// A dict (or list) of tensors found in a weights file.
#[derive(Debug)]
pub struct Group {
    /// Its key path in the file, `/`-separated (`state_dict`, `checkpoint/model`); empty for
    /// the top level.
    pub key: String,
    /// Names (the dict's keys) and tensors, on the CPU, in file order.
    pub tensors: Vec<(String, Tensor)>,
}

/// Everything a weights file holds that convkit can use.
#[derive(Debug)]
pub struct Contents {
    pub path: PathBuf,
    /// Every dict or list that directly holds tensors, in file order.
    pub groups: Vec<Group>,
    /// Other values met at key paths, described (`("epoch", "an int")`,
    /// `("args", "a argparse.Namespace object")`); placeholders were never imported or run.
    pub others: Vec<(String, String)>,
}

/// `'state_dict'`, or `the top level` for the empty key path.
fn key_name(key: &str) -> String {
    if key.is_empty() {
        "the top level".into()
    } else {
        format!("'{key}'")
    }
}

/// Reads every group of tensors of a `.pth` (zip or legacy), `.safetensors` or convkit
/// checkpoint file (whose model section is one group).
///
/// # Errors
/// An unreadable, truncated or refused file, or one that holds no tensors at all (the error
/// names any placeholders the file holds instead, e.g. a call to `posix.system`).
pub fn read_contents(path: &Path) -> Result<Contents> {
    let contents = match detect(path)? {
        FileKind::Pth => pth::read(path)?,
        FileKind::LegacyPth => pth::read_legacy(path)?,
        FileKind::Safetensors => {
            let tensors = Tensor::read_safetensors(path).map_err(|e| {
                bad(
                    path,
                    format!("not a readable safetensors file (truncated or damaged?): {e}"),
                )
            })?;
            Contents {
                path: path.to_path_buf(),
                groups: vec![Group {
                    key: String::new(),
                    tensors: checkpoint_model_section(tensors),
                }],
                others: vec![],
            }
        }
    };
    if contents.groups.iter().all(|g| g.tensors.is_empty()) {
        let objects: Vec<String> = contents
            .others
            .iter()
            .filter(|(_, d)| d.ends_with(" object") || d.starts_with("the name "))
            .take(3)
            .map(|(k, d)| format!("{d} at {}", key_name(k)))
            .collect();
        if !objects.is_empty() {
            return Err(bad(
                path,
                format!(
                    "refused: the file holds no tensors, only Python objects convkit does not \
                     build ({}); nothing was imported or run",
                    objects.join(", ")
                ),
            ));
        }
        return Err(bad(
            path,
            "the file holds no tensors (not a state dict or checkpoint)",
        ));
    }
    Ok(contents)
}

/// The named tensors of a weights file, on the CPU: the file's largest group of tensors (the
/// state dict of a plain file; see [`choose`] to pick the one that fits a model). A convkit
/// checkpoint contributes its model weights only.
///
/// # Errors
/// As [`read_contents`].
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let contents = read_contents(path)?;
    let best = (0..contents.groups.len())
        .rev()
        .max_by_key(|&i| contents.groups[i].tensors.len())
        .unwrap_or(0);
    Ok(contents
        .groups
        .into_iter()
        .nth(best)
        .map(|g| g.tensors)
        .unwrap_or_default())
}

/// A convkit checkpoint stores `model.<key>`, `optim.<key>` and `meta`; its model section is
/// returned without a contrastive projection head (`head.*`), which is dropped after
/// pre-training. Other safetensors files are returned as they are.
fn checkpoint_model_section(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    if !tensors.iter().any(|(n, _)| n == "meta") {
        return tensors;
    }
    tensors
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix("model.").map(|k| (k.to_string(), t)))
        .filter(|(k, _)| !k.starts_with("head."))
        .collect()
}

/// One row of `convkit weights inspect`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: String,
}

/// Every tensor of a file, named `<key path>/<name>` when it is nested (a safetensors file's
/// optimiser section included).
///
/// # Errors
/// As [`read_contents`].
pub fn inspect(path: &Path) -> Result<Vec<TensorInfo>> {
    let groups = match detect(path)? {
        FileKind::Safetensors => vec![Group {
            key: String::new(),
            tensors: Tensor::read_safetensors(path)
                .map_err(|e| bad(path, format!("not a readable safetensors file: {e}")))?,
        }],
        _ => read_contents(path)?.groups,
    };
    Ok(groups
        .into_iter()
        .flat_map(|g| {
            let key = g.key;
            g.tensors.into_iter().map(move |(name, t)| TensorInfo {
                name: match (key.is_empty(), name.is_empty()) {
                    (true, _) => name,
                    (false, true) => key.clone(),
                    (false, false) => format!("{key}/{name}"),
                },
                shape: t.size(),
                dtype: format!("{:?}", t.kind()).to_lowercase(),
            })
        })
        .collect())
}

/// How a state dict matched a model.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub wrong_shape: Vec<String>,
    /// Classifier tensors whose shape differs (another number of classes): the model keeps its
    /// new, freshly initialised head.
    pub replaced_head: Vec<String>,
    /// Where in the file the tensors came from (see [`Choice::describe`]), when searched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// What the names suggest when they do not fit (a timm file for a family whose timm names
    /// convkit does not map).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty()
    }
    /// One line per kind of problem, at most four names each.
    pub fn problems(&self) -> String {
        let mut out = Vec::new();
        for (what, items) in [
            ("missing", &self.missing),
            ("unexpected", &self.unexpected),
            ("wrong shape", &self.wrong_shape),
        ] {
            if items.is_empty() {
                continue;
            }
            let more = if items.len() > 4 {
                format!(", ... ({} in all)", items.len())
            } else {
                String::new()
            };
            out.push(format!(
                "{what}: {}{more}",
                items[..items.len().min(4)].join(", ")
            ));
        }
        out.extend(self.hint.clone());
        out.join("; ")
    }
}

/// Name prefixes only timm's models use: EfficientNet/MobileNet/RegNet (`conv_stem`, `blocks`,
/// `conv_head`, `s1`), ConvNeXt (`stages`, `head.fc`; its `stem.0` is also torchvision RegNet's) and VGG/DenseNet (`pre_logits`).
const TIMM_PREFIXES: [&str; 7] = [
    "conv_stem.",
    "conv_head.",
    "blocks.",
    "stages.",
    "head.fc.",
    "pre_logits.",
    "s1.",
];

/// A hint when `unexpected` names are timm's: timm names ResNets as torchvision does (they load
/// as they are), but names its other families its own way, which convkit does not map yet.
fn timm_hint(unexpected: &[String], model: &str) -> Option<String> {
    let timm = unexpected
        .iter()
        .any(|n| TIMM_PREFIXES.iter().any(|p| n.starts_with(p)));
    timm.then(|| {
        format!(
            "these look like timm's names: convkit reads torchvision's, which timm's ResNet \
             family shares, but does not map timm's {model} names yet; use torchvision's \
             weights (`convkit weights list`)"
        )
    })
}

/// How to treat a state dict that does not fit exactly.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Refuse missing, unexpected or wrongly shaped tensors (PyTorch's `strict=True`).
    pub strict: bool,
    /// A classifier of another size is expected (a new head) rather than an error.
    pub replace_head: bool,
}

/// Copies `weights` into the model's variables, checking names and shapes like PyTorch's
/// `load_state_dict`. `num_batches_tracked` entries are accepted and ignored: convkit's BatchNorm
/// uses a fixed momentum and never reads them.
pub fn load_into(
    path: &Path,
    weights: &[(String, Tensor)],
    model: &mut Model,
    opts: LoadOptions,
) -> Result<LoadReport> {
    let vars = model.vs.variables();
    let head = format!("{}.", model.net.classifier().name);
    let renamed: Vec<(String, Tensor)> = weights
        .iter()
        .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
        .map(|(n, t)| (current_name(n), t.shallow_clone()))
        .collect();
    let weights: Vec<&(String, Tensor)> = renamed.iter().collect();
    let mut report = LoadReport::default();
    // Variables a training objective added (SupCon's projection head) are the objective's own,
    // freshly initialised: no weights file has them.
    for name in vars.keys().filter(|n| !model.objective_owns(n)) {
        if !weights.iter().any(|(n, _)| n == name) {
            report.missing.push(name.clone());
        }
    }
    let mut accepted = Vec::new();
    for (name, t) in weights {
        match vars.get(name) {
            // A classifier of another shape (a projection MLP of a self-supervised encoder,
            // `fc.0.weight`) is replaced by the model's new head.
            None if opts.replace_head && name.starts_with(&head) => report
                .replaced_head
                .push(format!("{name} {:?} left out", t.size())),
            None => report.unexpected.push(name.clone()),
            Some(v) if v.size() == t.size() => accepted.push((name, v, t)),
            Some(v) if opts.replace_head && name.starts_with(&head) => report
                .replaced_head
                .push(format!("{name} {:?} -> {:?}", t.size(), v.size())),
            Some(v) => report.wrong_shape.push(format!(
                "{name} is {:?}, the model has {:?}",
                t.size(),
                v.size()
            )),
        }
    }
    // Missing head tensors are expected when the head is replaced: a file without a classifier
    // (a backbone, a self-supervised encoder) gets the model's new, freshly initialised head.
    if opts.replace_head {
        let (new_head, rest): (Vec<String>, Vec<String>) =
            report.missing.drain(..).partition(|n| n.starts_with(&head));
        report.missing = rest;
        report
            .replaced_head
            .extend(new_head.into_iter().map(|n| format!("{n} new")));
    }
    report.missing.sort();
    report.unexpected.sort();
    report.wrong_shape.sort();
    report.hint = timm_hint(&report.unexpected, &model.spec.name);
    if opts.strict && !report.is_clean() {
        return Err(bad(
            path,
            format!(
                "weights do not fit the {} architecture; {}",
                model.spec.name,
                report.problems()
            ),
        ));
    }
    if !accepted.iter().any(|(n, _, _)| !is_buffer(n)) {
        return Err(bad(
            path,
            format!(
                "none of the file's tensors fit the {} architecture; {}",
                model.spec.name,
                report.problems()
            ),
        ));
    }
    tch::no_grad(|| {
        for (_, v, t) in &accepted {
            v.shallow_clone().copy_(t);
        }
    });
    report.loaded = accepted.len();
    Ok(report)
}

/// A state-dict key as torchvision's current models name it. torchvision's DenseNet weights
/// files keep the names of its first release (`denselayer1.norm.1.weight` for today's
/// `denselayer1.norm1.weight`), which torchvision renames on loading; so does convkit.
pub fn current_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let legacy = parts.windows(3).position(|w| {
        w[0].starts_with("denselayer")
            && matches!(w[1], "norm" | "relu" | "conv")
            && matches!(w[2], "1" | "2")
    });
    match legacy {
        Some(i) => {
            let mut out: Vec<String> = parts[..=i].iter().map(|s| s.to_string()).collect();
            out.push(format!("{}{}", parts[i + 1], parts[i + 2]));
            out.extend(parts[i + 3..].iter().map(|s| s.to_string()));
            out.join(".")
        }
        None => name.to_string(),
    }
}

/// Where a named torchvision weight set downloads from, and its checksum.
pub fn remote(name: &str) -> Option<Remote> {
    let p = torchvision::find(name)?;
    Some(Remote {
        url: p.url(),
        file_name: p.file.to_string(),
        checksum: Checksum::Sha256Prefix(p.sha256_prefix().to_string()),
    })
}

/// Where downloaded weights live: `<data dir>/weights`.
pub fn weights_dir() -> PathBuf {
    crate::data::data_dir().join("weights")
}

/// PyTorch's own cache, which users of torchvision already have filled.
fn torch_hub_file(file: &str) -> Option<PathBuf> {
    let home = std::env::var_os("TORCH_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/torch")))?;
    let p = home.join("hub/checkpoints").join(file);
    p.exists().then_some(p)
}

/// The verified local file of a named torchvision weight set, downloading it if needed.
pub fn fetch(name: &str, progress: bool) -> Result<PathBuf> {
    let r = remote(name).ok_or_else(|| {
        let known: Vec<&str> = torchvision::PRETRAINED.iter().map(|p| p.name).collect();
        bad(
            Path::new(name),
            format!("no such pretrained weights; known: {}", known.join(", ")),
        )
    })?;
    if let Some(p) = torch_hub_file(&r.file_name) {
        download::verify(&p, &r.checksum)?;
        return Ok(p);
    }
    Ok(download::fetch(&r, &weights_dir(), progress)?)
}

/// A `--weights` argument: a file, a convkit run folder, or the name of a torchvision weight
/// set.
pub fn resolve(arg: &str, progress: bool) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.is_dir() {
        return Ok(RunDir::resolve_checkpoint(p));
    }
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if remote(arg).is_some() {
        return fetch(arg, progress);
    }
    Err(bad(p, "no such file (nor a known weights name)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn densenet_files_keep_their_first_names() {
        use super::current_name;
        assert_eq!(
            current_name("features.denseblock1.denselayer1.norm.1.weight"),
            "features.denseblock1.denselayer1.norm1.weight"
        );
        assert_eq!(
            current_name("features.denseblock4.denselayer16.conv.2.weight"),
            "features.denseblock4.denselayer16.conv2.weight"
        );
        assert_eq!(
            current_name("layer1.0.conv1.weight"),
            "layer1.0.conv1.weight"
        );
    }
}
