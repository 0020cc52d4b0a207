//! PyTorch's `torch.save` files, read through the safe pickle reader ([`crate::pickle`]):
//!
//! - the zip format (PyTorch >= 1.6): `<name>/data.pkl` describes the object, with tensors
//!   pointing at storages stored raw in `<name>/data/<key>`;
//! - the legacy format (`_use_new_zipfile_serialization=False`, and every file before 1.6),
//!   as `torch/serialization.py`'s `_legacy_save` writes it: consecutive pickles of the magic
//!   number `0x1950a86a20f9469cfc6c`, the protocol version 1001, a `sys_info` dict, the object,
//!   and the list of storage keys; then, for each key in that list's order, an 8-byte
//!   little-endian element count followed by the storage's raw bytes.
//!
//! Every dict (or list) that directly holds tensors becomes a [`Group`] named by its key path
//! in the file (`state_dict`, `checkpoint/model`); [`super::choose`] picks the one that fits a
//! model.

use super::{Contents, Group, WeightsError};
use crate::pickle::{self, TensorRef, Value};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

fn bad(path: &Path, problem: impl Into<String>) -> WeightsError {
    WeightsError::Bad {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn kind_of(dtype: &str) -> Option<(Kind, usize)> {
    Some(match dtype {
        "FloatStorage" => (Kind::Float, 4),
        "DoubleStorage" => (Kind::Double, 8),
        "HalfStorage" => (Kind::Half, 2),
        "BFloat16Storage" => (Kind::BFloat16, 2),
        "LongStorage" => (Kind::Int64, 8),
        "IntStorage" => (Kind::Int, 4),
        "ShortStorage" => (Kind::Int16, 2),
        "CharStorage" => (Kind::Int8, 1),
        "ByteStorage" => (Kind::Uint8, 1),
        "BoolStorage" => (Kind::Bool, 1),
        _ => return None,
    })
}

type Archive = zip::ZipArchive<std::fs::File>;

/// How many times its compressed size an archive entry may inflate to, above [`MIN_INFLATED`].
const MAX_INFLATION: u64 = 64;
/// Entries up to this size may inflate from anything (small pickles compress well).
const MIN_INFLATED: u64 = 64 << 20;

fn read_entry(zip: &mut Archive, name: &str, path: &Path) -> Result<Vec<u8>, WeightsError> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| bad(path, format!("archive entry {name}: {e}")))?;
    // The size an entry declares is not trusted for allocation: at most what the file on disk
    // could hold is reserved, and reading stops one byte past the declared size.
    let on_disk = std::fs::metadata(path).map_or(0, |m| m.len());
    let declared = f.size();
    // torch.save stores its entries uncompressed; an entry that inflates far beyond its
    // compressed size is a deflate bomb, not weights.
    let limit = (f.compressed_size().saturating_mul(MAX_INFLATION)).max(MIN_INFLATED);
    if declared > limit {
        return Err(bad(
            path,
            format!(
                "archive entry {name} inflates from {} to {declared} bytes: refused \
                 (torch.save stores entries uncompressed)",
                f.compressed_size()
            ),
        ));
    }
    let mut buf = Vec::with_capacity(declared.min(on_disk) as usize);
    (&mut f)
        .take(declared.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| bad(path, format!("archive entry {name} is damaged: {e}")))?;
    if buf.len() as u64 != declared {
        return Err(bad(
            path,
            format!(
                "archive entry {name} declares {declared} bytes but holds {}{}",
                buf.len().min(declared as usize),
                if buf.len() as u64 > declared {
                    " and more"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(buf)
}

/// Reads every group of tensors of a zip-format `.pth` file.
///
/// # Errors
/// A damaged archive, a refused or malformed pickle, storages of the wrong size.
pub fn read(path: &Path) -> Result<Contents, WeightsError> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, e.to_string()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        bad(
            path,
            format!("not a readable torch.save archive (truncated or damaged zip: {e})"),
        )
    })?;
    let pkl = zip
        .file_names()
        .map(str::to_string)
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| {
            bad(
                path,
                "the archive has no <name>/data.pkl: not a torch.save file",
            )
        })?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder"), path)
        && order != b"little"
    {
        return Err(bad(path, "big-endian tensors are not supported"));
    }
    let root = pickle::load(&read_entry(&mut zip, &pkl, path)?)
        .map_err(|e| bad(path, format!("{pkl}: {e}")))?;
    let mut storages: HashMap<String, Rc<Vec<u8>>> = HashMap::new();
    contents(path, &root, |key| {
        if let Some(d) = storages.get(key) {
            return Ok(d.clone());
        }
        let d = Rc::new(read_entry(&mut zip, &format!("{prefix}data/{key}"), path)?);
        storages.insert(key.to_string(), d.clone());
        Ok(d)
    })
}

/// `0x1950a86a20f9469cfc6c`, little-endian, as pickle's `LONG1` stores it.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Reads every group of tensors of a legacy (pre-1.6 format) `torch.save` file.
///
/// # Errors
/// Not the legacy format, a refused or malformed pickle, or storages that run past the end of
/// the file.
pub fn read_legacy(path: &Path) -> Result<Contents, WeightsError> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, e.to_string()))?;
    let mut at = 0usize;
    let mut next = |what: &str| -> Result<Value, WeightsError> {
        let (v, n) = pickle::load_prefix(&bytes[at..])
            .map_err(|e| bad(path, format!("legacy torch.save file, {what}: {e}")))?;
        at += n;
        Ok(v)
    };
    let magic = next("magic number")?;
    if !matches!(&magic, Value::BigInt(b) if **b == LEGACY_MAGIC) {
        return Err(bad(
            path,
            "a pickle, but not a torch.save file (no torch magic number)",
        ));
    }
    if !matches!(next("protocol version")?, Value::Int(1001)) {
        return Err(bad(path, "legacy torch.save file of an unknown version"));
    }
    let info = next("sys_info")?;
    if matches!(info.get("little_endian"), Some(Value::Bool(false))) {
        return Err(bad(path, "big-endian tensors are not supported"));
    }
    let root = next("object")?;
    let keys = next("storage keys")?
        .items()
        .ok_or_else(|| bad(path, "legacy torch.save file without its storage key list"))?;
    // Each storage's element size comes from its persistent id, wherever that sits (a tensor,
    // or the arguments of an object convkit does not build, such as an optimiser).
    let mut sizes: HashMap<String, (i64, usize)> = HashMap::new();
    for s in pickle::storages(&root) {
        let (_, size) = kind_of(&s.dtype).unwrap_or((Kind::Uint8, 1));
        sizes.insert(s.key.clone(), (s.numel, size));
    }
    let mut storages: HashMap<String, Rc<Vec<u8>>> = HashMap::new();
    for key in keys {
        let key = key
            .as_text()
            .ok_or_else(|| bad(path, "a storage key is not a string"))?;
        let truncated = || {
            bad(
                path,
                format!("storage {key} runs past the end of the file: the file is truncated"),
            )
        };
        let count_end = at.checked_add(8).filter(|&e| e <= bytes.len());
        let count_end = count_end.ok_or_else(truncated)?;
        let count = u64::from_le_bytes(bytes[at..count_end].try_into().unwrap());
        let &(numel, size) = sizes
            .get(&key)
            .ok_or_else(|| bad(path, format!("storage {key} is used by no tensor")))?;
        if i64::try_from(count).ok() != Some(numel) {
            return Err(bad(
                path,
                format!("storage {key} holds {count} elements, its tensors say {numel}"),
            ));
        }
        let end = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(size))
            .and_then(|n| count_end.checked_add(n))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(truncated)?;
        storages.insert(key, Rc::new(bytes[count_end..end].to_vec()));
        at = end;
    }
    contents(path, &root, |key| {
        storages
            .get(key)
            .cloned()
            .ok_or_else(|| bad(path, format!("storage {key} is missing from the file")))
    })
}

/// Tensor references grouped by the dict or list holding them, and a description of every
/// other value met at a key path (`('args', 'a argparse.Namespace object')`).
type RefGroups = (
    Vec<(String, Vec<(String, Rc<TensorRef>)>)>,
    Vec<(String, String)>,
);

/// Walks the object the pickle built: every dict, list and tuple is visited once (shared ones
/// too); placeholders are described, never looked into.
fn tensor_groups(root: &Value) -> RefGroups {
    fn join(path: &str, k: &str) -> String {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}/{k}")
        }
    }
    fn walk(v: &Value, path: &str, seen: &mut HashSet<usize>, out: &mut RefGroups) {
        let entries: Vec<(String, Value)> = match v {
            Value::Dict(d) => {
                if !seen.insert(Rc::as_ptr(d) as *const () as usize) {
                    return;
                }
                d.borrow()
                    .iter()
                    .map(|(k, v)| {
                        let k = match k {
                            Value::Int(i) => i.to_string(),
                            other => other.as_text().unwrap_or_else(|| other.describe()),
                        };
                        (k, v.clone())
                    })
                    .collect()
            }
            Value::List(_) | Value::Tuple(_) => {
                let key = match v {
                    Value::List(l) => Rc::as_ptr(l) as *const () as usize,
                    Value::Tuple(t) => t.as_ptr() as usize,
                    _ => unreachable!(),
                };
                if !seen.insert(key) {
                    return;
                }
                let items = v.items().unwrap_or_default();
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect()
            }
            Value::Tensor(t) => {
                // A bare tensor (the root, or inside a placeholder-free tuple).
                out.0
                    .push((path.to_string(), vec![(String::new(), t.clone())]));
                return;
            }
            other => {
                // Bounded: a list of a million numbers is not worth describing one by one.
                if (!path.is_empty() || other.placeholder_name().is_some()) && out.1.len() < 10_000
                {
                    out.1.push((path.to_string(), other.describe()));
                }
                return;
            }
        };
        let tensors: Vec<(String, Rc<TensorRef>)> = entries
            .iter()
            .filter_map(|(k, v)| match v {
                Value::Tensor(t) => Some((k.clone(), t.clone())),
                _ => None,
            })
            .collect();
        if !tensors.is_empty() {
            out.0.push((path.to_string(), tensors));
        }
        for (k, v) in &entries {
            if !matches!(v, Value::Tensor(_)) {
                walk(v, &join(path, k), seen, out);
            }
        }
    }
    let mut out = (Vec::new(), Vec::new());
    walk(root, "", &mut HashSet::new(), &mut out);
    out
}

/// The groups of tensors under `root`, their storages fetched by key.
fn contents(
    path: &Path,
    root: &Value,
    mut fetch: impl FnMut(&str) -> Result<Rc<Vec<u8>>, WeightsError>,
) -> Result<Contents, WeightsError> {
    let (refs, others) = tensor_groups(root);
    let mut groups = Vec::new();
    for (key, entries) in refs {
        let mut tensors = Vec::new();
        for (name, t) in entries {
            let data = fetch(&t.storage.key)?;
            let full = if key.is_empty() {
                name.clone()
            } else {
                format!("{key}/{name}")
            };
            let tensor = to_tensor(&t, &data).map_err(|p| bad(path, format!("{full}: {p}")))?;
            tensors.push((name, tensor));
        }
        groups.push(Group { key, tensors });
    }
    Ok(Contents {
        path: path.to_path_buf(),
        groups,
        others,
    })
}

/// The most elements a view may hold beyond its storage's own (expanded tensors).
const MAX_REPEATED_ELEMENTS: i64 = 1 << 24;

fn to_tensor(t: &TensorRef, data: &[u8]) -> Result<Tensor, String> {
    let (kind, size) =
        kind_of(&t.storage.dtype).ok_or_else(|| format!("dtype {}", t.storage.dtype))?;
    let numel = t.storage.numel;
    let expected = usize::try_from(numel)
        .ok()
        .and_then(|n| n.checked_mul(size));
    if expected != Some(data.len()) {
        return Err(format!(
            "storage {} holds {} bytes, expected {} x {}: the file is truncated or damaged",
            t.storage.key,
            data.len(),
            numel,
            t.storage.dtype
        ));
    }
    // The furthest element the view reads must lie inside the storage.
    let empty = t.shape.contains(&0);
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (n, s)| {
            if *n < 0 || *s < 0 {
                return None;
            }
            acc.checked_add((n - 1).max(0).checked_mul(*s)?)
        });
    let inside = match last {
        Some(last) => empty || last < numel,
        None => false,
    };
    if t.shape.len() != t.stride.len() || t.offset < 0 || !inside {
        return Err("tensor view lies outside its storage".into());
    }
    // A view may repeat its storage's elements (stride 0, as `expand` makes), but a weights file
    // has no use for a tensor much larger than its storage: a few hundred bytes must not
    // become gigabytes when the view is made contiguous.
    let elements = t
        .shape
        .iter()
        .try_fold(1i64, |acc, &n| acc.checked_mul(n))
        .unwrap_or(i64::MAX);
    if elements > numel.max(MAX_REPEATED_ELEMENTS) {
        return Err(format!(
            "tensor of shape {:?} ({elements} elements) would repeat its storage of {numel} \
             elements: refused",
            t.shape
        ));
    }
    let storage = Tensor::from_data_size(data, &[numel], kind);
    Ok(storage
        .as_strided(t.shape.as_slice(), t.stride.as_slice(), t.offset)
        .contiguous())
}
