//! PyTorch's `torch.save` files (the zip format, PyTorch >= 1.6): `<name>/data.pkl` describes
//! the state dict with tensors pointing at storages stored raw in `<name>/data/<key>`.

use super::WeightsError;
use super::pickle::{self, TensorRef, Value};
use std::io::Read;
use std::path::Path;
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

fn read_entry(zip: &mut Archive, name: &str, path: &Path) -> Result<Vec<u8>, WeightsError> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| bad(path, format!("archive entry {name}: {e}")))?;
    let mut buf = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut buf)
        .map_err(|e| bad(path, format!("archive entry {name} is damaged: {e}")))?;
    Ok(buf)
}

/// Reads the state dict of a zip-format `.pth` file.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>, WeightsError> {
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
    let entries = state_dict_entries(root).map_err(|p| bad(path, p))?;
    entries
        .into_iter()
        .map(|(name, t)| {
            let data = read_entry(&mut zip, &format!("{prefix}data/{}", t.storage.key), path)?;
            let tensor = to_tensor(&t, &data).map_err(|p| bad(path, format!("{name}: {p}")))?;
            Ok((name, tensor))
        })
        .collect()
}

/// The `name -> tensor` pairs of a state dict; a checkpoint that wraps one under `state_dict`
/// or `model` is unwrapped.
fn state_dict_entries(root: Value) -> Result<Vec<(String, TensorRef)>, String> {
    let Value::Dict(items) = root else {
        return Err("the file does not hold a state dict (a dict of tensors)".into());
    };
    let wrapped = items.iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), Value::Dict(_)) if k == "state_dict" || k == "model" => Some(v.clone()),
        _ => None,
    });
    if let Some(inner) = wrapped {
        return state_dict_entries(inner);
    }
    let mut out = Vec::new();
    for (k, v) in items {
        match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => out.push((k, t)),
            // Other plain values (epoch numbers, metadata) are not weights.
            (Value::Str(_), _) => {}
            (k, _) => return Err(format!("state dict key {k:?} is not a string")),
        }
    }
    if out.is_empty() {
        return Err("the state dict holds no tensors".into());
    }
    Ok(out)
}

fn to_tensor(t: &TensorRef, data: &[u8]) -> Result<Tensor, String> {
    let (kind, size) =
        kind_of(&t.storage.dtype).ok_or_else(|| format!("dtype {}", t.storage.dtype))?;
    let numel = t.storage.numel;
    if numel < 0 || data.len() != numel as usize * size {
        return Err(format!(
            "storage {} holds {} bytes, expected {} ({} x {}): the file is truncated or damaged",
            t.storage.key,
            data.len(),
            numel.max(0) as usize * size,
            numel,
            t.storage.dtype
        ));
    }
    // The furthest element the view reads must lie inside the storage.
    let last: i64 = t.offset
        + t.shape
            .iter()
            .zip(&t.stride)
            .map(|(n, s)| (n - 1).max(0) * s)
            .sum::<i64>();
    let empty = t.shape.contains(&0);
    if t.shape.len() != t.stride.len() || t.offset < 0 || (!empty && last >= numel.max(1)) {
        return Err("tensor view lies outside its storage".into());
    }
    let storage = Tensor::from_data_size(data, &[numel], kind);
    Ok(storage
        .as_strided(t.shape.as_slice(), t.stride.as_slice(), t.offset)
        .contiguous())
}
