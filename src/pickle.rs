//! A pickle reader that builds data and never runs anything.
//!
//! Pickle is a program for a stack machine, and Python's own unpickler imports and calls
//! whatever a file names. This reader interprets the opcodes of protocols 0-5 that plain data
//! needs (tuples, lists, dicts, sets, strings, bytes, numbers, memo, persistent ids) and turns
//! every global into an inert name ([`Value::Global`]). Applying a name to arguments (`REDUCE`,
//! `NEWOBJ`) or giving an object its state (`BUILD`) only *records* the arguments in a
//! placeholder ([`Value::Object`]); nothing is imported or called, there is nothing in Rust to
//! call. A few names are understood as data instead, each checked for its exact argument shapes:
//!
//! - `collections.OrderedDict()` -> an empty [`Value::Dict`];
//! - `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` -> [`Value::Tensor`] (PyTorch's
//!   `torch/_utils.py`), with storages from persistent ids `('storage', torch.<T>Storage, key,
//!   location, numel[, view_metadata])` (`torch/serialization.py`);
//! - `_codecs.encode(str, 'latin1')` -> [`Value::Bytes`] (how Python 3 pickles bytes at
//!   protocol 2).
//!
//! numpy arrays and scalars stay placeholders; [`Value::ndarray`] and [`Value::as_f64`] read
//! them as data afterwards (numpy's `_reconstruct` + `BUILD` state, `_frombuffer`, `scalar`).
//! Only an attempt to use a placeholder as a tensor, a storage or a state dict is an error,
//! and that error names the placeholder's `module.name`.
//!
//! Values are shared, not copied: a memo reference is an `Rc` clone, so a file that nests
//! `[x, x]` 24 times costs 24 nodes, not 16 million. Structures deeper than [`MAX_DEPTH`] and
//! self-containing ones are refused after the read, and are never walked recursively (a
//! refused structure is leaked rather than dropped, so no recursion can overflow the stack).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The deepest nesting of containers a pickle may build.
pub const MAX_DEPTH: usize = 1000;

/// A storage reference from a `BINPERSID`: the bytes live elsewhere (a zip entry `data/<key>`,
/// or after the pickles in the legacy format).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    /// The storage type's name, e.g. `FloatStorage`.
    pub dtype: String,
    /// Number of elements.
    pub numel: i64,
}

/// A tensor view of a storage, as `torch._utils._rebuild_tensor_v2` describes it (offset,
/// shape and stride in elements).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub shape: Vec<i64>,
    pub stride: Vec<i64>,
}

/// A mutable container, shared by every memo reference to it.
pub type Shared<T> = Rc<RefCell<T>>;

/// An inert stand-in for a Python object: the global it names and what the pickle gave it.
/// Nothing is ever imported or called.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object {
    pub module: String,
    pub name: String,
    /// The arguments of `REDUCE` / `NEWOBJ` (a tuple), `None` for a bare global.
    pub args: Option<Value>,
    /// The state given by `BUILD`.
    pub state: Option<Value>,
    /// Items appended (`APPEND(S)` on a list subclass).
    pub list: Vec<Value>,
    /// Items set (`SETITEM(S)` on a dict subclass).
    pub dict: Vec<(Value, Value)>,
}

impl Object {
    /// `module.name`.
    pub fn qualname(&self) -> String {
        format!("{}.{}", self.module, self.name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits: its little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    /// `bytes`, `bytearray`, and Python 2 `str` (`STRING`, `BINSTRING`).
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Shared<Vec<Value>>),
    /// Keeps insertion order (state dicts are ordered).
    Dict(Shared<Vec<(Value, Value)>>),
    Set(Shared<Vec<Value>>),
    /// A global's name (`module`, `name`), never imported.
    Global(Rc<(String, String)>),
    /// A placeholder for an object built from a global.
    Object(Shared<Object>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn str(s: &str) -> Value {
        Value::Str(Rc::from(s))
    }

    /// A short description for messages: the type, or `module.name` for a placeholder.
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Set(_) => "a set".into(),
            Value::Global(g) => format!("the name {}.{}", g.0, g.1),
            Value::Object(o) => format!("a {} object", o.borrow().qualname()),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
        }
    }

    /// The placeholder's `module.name`, if this is one (or a bare global).
    pub fn placeholder_name(&self) -> Option<String> {
        match self {
            Value::Object(o) => Some(o.borrow().qualname()),
            Value::Global(g) => Some(format!("{}.{}", g.0, g.1)),
            _ => None,
        }
    }

    /// A text key: `str`, or `bytes` read as Latin-1 (Python 2 strings, as torchvision reads
    /// them with `encoding='latin1'`).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(b) => Some(b.iter().map(|&c| c as char).collect()),
            _ => None,
        }
    }

    /// The entries of a dict (shallow: the values are shared).
    pub fn dict_items(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }

    /// The value under a text key (`str` or `bytes`) of a dict.
    pub fn get(&self, key: &str) -> Option<Value> {
        let Value::Dict(d) = self else { return None };
        d.borrow()
            .iter()
            .find(|(k, _)| k.as_text().as_deref() == Some(key))
            .map(|(_, v)| v.clone())
    }

    /// The items of a list or tuple (shallow).
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::List(l) => Some(l.borrow().clone()),
            Value::Tuple(t) => Some(t.to_vec()),
            _ => None,
        }
    }

    /// A number: an int, a float, a bool, or a numpy scalar (`numpy.float64(93.1)`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Bool(b) => Some(*b as u8 as f64),
            Value::Object(_) => {
                let a = self.ndarray().ok()?;
                (a.shape.iter().product::<usize>() == 1)
                    .then(|| a.to_f64().ok()?.first().copied())
                    .flatten()
            }
            _ => None,
        }
    }

    /// A list of ints: a list or tuple of ints, or a 1-D integer numpy array.
    ///
    /// # Errors
    /// Another kind of value, or an element that is not an integer.
    pub fn as_i64_list(&self) -> Result<Vec<i64>, String> {
        if let Some(items) = self.items() {
            return items
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Ok(*i),
                    Value::Bool(b) => Ok(*b as i64),
                    other => Err(format!("expected an int, found {}", other.describe())),
                })
                .collect();
        }
        self.ndarray()?.to_i64()
    }

    /// A numpy array as data, from the placeholders numpy's pickling leaves:
    /// `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` with `BUILD` state
    /// `(version, shape, dtype, is_fortran, raw bytes)` (`ndarray.__reduce__` in
    /// numpy/core/src/multiarray/methods.c), `numpy.core.numeric._frombuffer(buffer, dtype,
    /// shape, order)` (protocol 5), and `numpy.core.multiarray.scalar(dtype, bytes)` (a 0-d
    /// value). `numpy._core` (numpy 2) is accepted as well as `numpy.core`.
    ///
    /// # Errors
    /// Not a numpy array, an object array (Python objects as elements), a big-endian dtype, or
    /// raw bytes whose length does not match shape x item size.
    pub fn ndarray(&self) -> Result<NdArray, String> {
        let Value::Object(o) = self else {
            return Err(format!("expected a numpy array, found {}", self.describe()));
        };
        let o = o.borrow();
        let numpy = |m: &str| m == "numpy.core.multiarray" || m == "numpy._core.multiarray";
        let args = o.args.as_ref().and_then(|a| a.items()).unwrap_or_default();
        let what = || format!("a {} object is not a numpy array", o.qualname());
        let (dtype, shape, fortran, data) = match (o.module.as_str(), o.name.as_str()) {
            (m, "_reconstruct") if numpy(m) => {
                let state = o.state.as_ref().and_then(|s| s.items()).ok_or_else(what)?;
                let [_, shape, dtype, fortran, data] = state.as_slice() else {
                    return Err(format!("numpy array state of {} items", state.len()));
                };
                let fortran = matches!(fortran, Value::Bool(true) | Value::Int(1));
                (dtype.clone(), shape_of(shape)?, fortran, data.clone())
            }
            ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => {
                let [data, dtype, shape, order] = args.as_slice() else {
                    return Err("_frombuffer with unexpected arguments".into());
                };
                let fortran = order.as_text().as_deref() == Some("F");
                (dtype.clone(), shape_of(shape)?, fortran, data.clone())
            }
            (m, "scalar") if numpy(m) => {
                let [dtype, data] = args.as_slice() else {
                    return Err("numpy scalar with unexpected arguments".into());
                };
                (dtype.clone(), vec![], false, data.clone())
            }
            _ => return Err(what()),
        };
        let dtype = dtype_of(&dtype)?;
        let Value::Bytes(data) = data else {
            return Err(format!(
                "numpy array of dtype {dtype} holds {} instead of raw bytes (object arrays are not read)",
                data.describe()
            ));
        };
        let a = NdArray {
            dtype,
            shape,
            fortran,
            data,
        };
        let expected = a
            .shape
            .iter()
            .try_fold(a.item_size()?, |n, &d| n.checked_mul(d))
            .ok_or("numpy array size overflows")?;
        if a.data.len() != expected {
            return Err(format!(
                "numpy array {:?} of {} holds {} bytes, expected {expected}",
                a.shape,
                a.dtype,
                a.data.len()
            ));
        }
        Ok(a)
    }
}

fn shape_of(v: &Value) -> Result<Vec<usize>, String> {
    let items = match v {
        Value::Int(n) => vec![Value::Int(*n)],
        _ => v.items().ok_or("numpy shape is not a tuple")?,
    };
    items
        .iter()
        .map(|d| match d {
            Value::Int(n) if *n >= 0 => Ok(*n as usize),
            _ => Err("numpy shape holds something other than a size".to_string()),
        })
        .collect()
}

/// `numpy.dtype('f8', False, True)` with `BUILD` state `(3, '<', ...)` -> `"<f8"`.
fn dtype_of(v: &Value) -> Result<String, String> {
    let Value::Object(o) = v else {
        return Err(format!("numpy dtype is {}", v.describe()));
    };
    let o = o.borrow();
    if o.module != "numpy" || o.name != "dtype" {
        return Err(format!("numpy dtype is a {} object", o.qualname()));
    }
    let args = o.args.as_ref().and_then(|a| a.items()).unwrap_or_default();
    let code = args
        .first()
        .and_then(|a| a.as_text())
        .ok_or("numpy dtype without a type code")?;
    let order = o
        .state
        .as_ref()
        .and_then(|s| s.items())
        .and_then(|s| s.get(1).and_then(|b| b.as_text()))
        .unwrap_or_else(|| "|".into());
    let order = match order.as_str() {
        "<" | "=" => "<",
        "|" => "|",
        ">" => return Err(format!("big-endian numpy dtype >{code} is not supported")),
        other => return Err(format!("numpy byte order '{other}'")),
    };
    Ok(format!("{order}{code}"))
}

/// A numpy array read as data (`dtype` as numpy writes it: `|u1`, `<i8`, `<f4`, ...; `shape`
/// in elements; `data` the raw bytes, C order unless `fortran`).
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub fortran: bool,
    pub data: Rc<[u8]>,
}

impl NdArray {
    /// Bytes per element.
    ///
    /// # Errors
    /// An unknown type code.
    pub fn item_size(&self) -> Result<usize, String> {
        let code = &self.dtype[1..];
        match code {
            "b1" | "u1" | "i1" => Ok(1),
            "u2" | "i2" | "f2" => Ok(2),
            "u4" | "i4" | "f4" => Ok(4),
            "u8" | "i8" | "f8" => Ok(8),
            _ => Err(format!("numpy dtype {} is not read", self.dtype)),
        }
    }

    /// The bytes in C (row-major) order.
    fn c_order(&self) -> std::borrow::Cow<'_, [u8]> {
        if !self.fortran || self.shape.len() < 2 {
            return std::borrow::Cow::Borrowed(&self.data);
        }
        let size = self.item_size().unwrap_or(1);
        let n: usize = self.shape.iter().product();
        let mut out = Vec::with_capacity(self.data.len());
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..n {
            // Column-major offset of the current C-order index.
            let (mut off, mut stride) = (0, 1);
            for (i, d) in index.iter().zip(&self.shape) {
                off += i * stride;
                stride *= d;
            }
            out.extend_from_slice(&self.data[off * size..(off + 1) * size]);
            for k in (0..index.len()).rev() {
                index[k] += 1;
                if index[k] < self.shape[k] {
                    break;
                }
                index[k] = 0;
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// The elements of a `uint8` array in C order.
    ///
    /// # Errors
    /// Another dtype.
    pub fn as_u8_array(&self) -> Result<Vec<u8>, String> {
        if self.dtype != "|u1" {
            return Err(format!(
                "expected a uint8 array, found dtype {}",
                self.dtype
            ));
        }
        Ok(self.c_order().into_owned())
    }

    /// The elements of an integer (or bool) array in C order.
    ///
    /// # Errors
    /// A float dtype, or a `uint64` value above `i64::MAX`.
    pub fn to_i64(&self) -> Result<Vec<i64>, String> {
        let size = self.item_size()?;
        let kind = self.dtype.as_bytes()[1];
        let bytes = self.c_order();
        bytes
            .chunks_exact(size)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..size].copy_from_slice(c);
                match (kind, size) {
                    (b'u' | b'b', 8) => {
                        i64::try_from(u64::from_le_bytes(b)).map_err(|_| "uint64 overflow".into())
                    }
                    (b'u' | b'b', _) => Ok(i64::from_le_bytes(b)),
                    (b'i', _) => {
                        let shift = 64 - 8 * size as u32;
                        Ok(i64::from_le_bytes(b) << shift >> shift)
                    }
                    _ => Err(format!("expected an integer array, found {}", self.dtype)),
                }
            })
            .collect()
    }

    /// The elements as f64 in C order (any numeric dtype but float16).
    ///
    /// # Errors
    /// float16 or an unknown dtype.
    pub fn to_f64(&self) -> Result<Vec<f64>, String> {
        match &self.dtype[1..] {
            "f8" => Ok(self
                .c_order()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()),
            "f4" => Ok(self
                .c_order()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect()),
            _ => Ok(self.to_i64()?.into_iter().map(|v| v as f64).collect()),
        }
    }
}

const STORAGES: [&str; 10] = [
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error(
        "refused: the pickle uses opcode {opcode:#04x} ('{name}') at byte {at}, which plain data never needs"
    )]
    ForbiddenOpcode {
        opcode: u8,
        name: &'static str,
        at: usize,
    },
    /// A placeholder used where a tensor or storage is needed.
    #[error(
        "refused: the pickle uses {0} as {1}; it was not imported or run, and convkit does not build it"
    )]
    Placeholder(String, &'static str),
    #[error("the pickle ends early (at byte {0}): the file is truncated")]
    Truncated(usize),
    #[error("malformed pickle at byte {at}: {problem}")]
    Malformed { at: usize, problem: String },
    #[error("refused: the pickle nests containers more than {MAX_DEPTH} deep or inside themselves")]
    TooDeep,
}

/// Opcodes Python can emit that we never accept, named for the error message.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST",
        b'o' => "OBJ",
        b'P' => "PERSID",
        b'V' => "UNICODE",
        0x82..=0x84 => "EXT",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// A reference to every value taken off the stack or out of the memo, so that none is
    /// dropped (possibly deep, recursively) before its depth is checked at the end.
    grave: Vec<Value>,
}

type Res<T> = Result<T, PickleError>;

/// Runs the pickle in `data` and returns the object it builds.
///
/// # Errors
/// See [`load_prefix`]; bytes after `STOP` are ignored.
pub fn load(data: &[u8]) -> Res<Value> {
    load_prefix(data).map(|(v, _)| v)
}

/// Runs the pickle at the start of `data`; returns the object and the number of bytes up to
/// and including its `STOP`, so that consecutive pickles can be read (the legacy `torch.save`
/// format).
///
/// # Errors
/// A truncated or malformed pickle, an opcode plain data never needs (`INST`, `OBJ`,
/// extensions, out-of-band buffers), a placeholder used as a storage or tensor, or containers
/// nested deeper than [`MAX_DEPTH`] or inside themselves.
pub fn load_prefix(data: &[u8]) -> Res<(Value, usize)> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        grave: Vec::new(),
    };
    let mut seen = HashMap::new();
    let result = m.run().and_then(|v| match height(&v, 0, &mut seen) {
        Ok(_) => Ok(v),
        Err(e) => {
            std::mem::forget(v);
            Err(e)
        }
    });
    // What is left on the stack and in the memo is dropped only if it is shallow: a hostile
    // file may have built structures deep enough to overflow the stack when dropped
    // recursively; those are leaked instead (at most a few times the file's size).
    let rest = std::mem::take(&mut m.stack)
        .into_iter()
        .chain(std::mem::take(&mut m.memo).into_values())
        .chain(std::mem::take(&mut m.grave));
    for v in rest {
        if result.is_err() || height(&v, 0, &mut seen).is_err() {
            std::mem::forget(v);
        }
    }
    result.map(|v| (v, m.pos))
}

/// Every storage reference inside `v`, wherever it sits (in tensors, in containers, in the
/// arguments of inert placeholder objects): the legacy `torch.save` reader needs each stored
/// storage's element type, whoever holds it. `v` must come from [`load`], whose depth check
/// bounds the recursion.
pub fn storages(v: &Value) -> Vec<Rc<StorageRef>> {
    fn walk(v: &Value, seen: &mut std::collections::HashSet<usize>, out: &mut Vec<Rc<StorageRef>>) {
        let key = match v {
            Value::Storage(s) => {
                out.push(s.clone());
                return;
            }
            Value::Tensor(t) => {
                out.push(Rc::new(t.storage.clone()));
                return;
            }
            Value::Tuple(t) => t.as_ptr() as *const () as usize,
            Value::List(l) | Value::Set(l) => Rc::as_ptr(l) as *const () as usize,
            Value::Dict(d) => Rc::as_ptr(d) as *const () as usize,
            Value::Object(o) => Rc::as_ptr(o) as *const () as usize,
            _ => return,
        };
        if !seen.insert(key) {
            return;
        }
        match v {
            Value::Tuple(t) => t.iter().for_each(|c| walk(c, seen, out)),
            Value::List(l) | Value::Set(l) => l.borrow().iter().for_each(|c| walk(c, seen, out)),
            Value::Dict(d) => d.borrow().iter().for_each(|(k, c)| {
                walk(k, seen, out);
                walk(c, seen, out);
            }),
            Value::Object(o) => {
                let o = o.borrow();
                o.args
                    .iter()
                    .chain(&o.state)
                    .chain(&o.list)
                    .for_each(|c| walk(c, seen, out));
                o.dict.iter().for_each(|(k, c)| {
                    walk(k, seen, out);
                    walk(c, seen, out);
                });
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut std::collections::HashSet::new(), &mut out);
    out
}

/// The nesting height of `v`, refusing structures deeper than [`MAX_DEPTH`] or containing
/// themselves; `seen` caches the heights of shared containers, so each is visited once.
fn height(v: &Value, depth: usize, seen: &mut HashMap<usize, Option<usize>>) -> Res<usize> {
    if depth > MAX_DEPTH {
        return Err(PickleError::TooDeep);
    }
    // The cache is consulted before any child is collected: a container referenced K times
    // costs its children once, not K times.
    let key = match v {
        Value::Tuple(t) => t.as_ptr() as *const () as usize,
        Value::List(l) | Value::Set(l) => Rc::as_ptr(l) as *const () as usize,
        Value::Dict(d) => Rc::as_ptr(d) as *const () as usize,
        Value::Object(rc) => Rc::as_ptr(rc) as *const () as usize,
        _ => return Ok(0),
    };
    match seen.get(&key) {
        Some(Some(h)) => return Ok(*h),
        Some(None) => return Err(PickleError::TooDeep), // a cycle
        None => {}
    }
    let children: Vec<Value> = match v {
        Value::Tuple(t) => t.to_vec(),
        Value::List(l) | Value::Set(l) => l.borrow().clone(),
        Value::Dict(d) => d
            .borrow()
            .iter()
            .flat_map(|(k, v)| [k.clone(), v.clone()])
            .collect(),
        Value::Object(rc) => {
            let o = rc.borrow();
            let mut c: Vec<Value> = o.args.iter().chain(&o.state).cloned().collect();
            c.extend(o.list.iter().cloned());
            c.extend(o.dict.iter().flat_map(|(k, v)| [k.clone(), v.clone()]));
            c
        }
        _ => return Ok(0),
    };
    if children.is_empty() {
        seen.insert(key, Some(1));
        return Ok(1);
    }
    seen.insert(key, None);
    let mut h = 0;
    for c in &children {
        h = h.max(height(c, depth + 1, seen)?);
    }
    if depth + h + 1 > MAX_DEPTH + 1 {
        return Err(PickleError::TooDeep);
    }
    seen.insert(key, Some(h + 1));
    Ok(h + 1)
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated(self.data.len()))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len64(&mut self) -> Res<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| PickleError::Truncated(self.data.len()))
    }
    fn bad(&self, problem: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.pos,
            problem: problem.into(),
        }
    }
    fn line(&mut self) -> Res<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.data.len()))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn text(&mut self, n: usize) -> Res<Value> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(Value::str)
            .map_err(|_| self.bad("string is not UTF-8"))
    }
    fn bytes(&mut self, n: usize) -> Res<Value> {
        Ok(Value::Bytes(Rc::from(self.take(n)?)))
    }
    fn pop(&mut self) -> Res<Value> {
        let v = self
            .stack
            .pop()
            .ok_or_else(|| self.bad("stack underflow"))?;
        self.grave.push(v.clone());
        Ok(v)
    }
    fn top(&self) -> Res<&Value> {
        self.stack.last().ok_or_else(|| self.bad("stack underflow"))
    }
    /// Everything pushed since the last MARK.
    fn pop_mark(&mut self) -> Res<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| self.bad("no MARK"))?;
        if m > self.stack.len() {
            return Err(self.bad("MARK above the stack"));
        }
        let items = self.stack.split_off(m);
        self.grave.extend(items.iter().cloned());
        Ok(items)
    }
    fn memo_get(&self, k: u32) -> Res<Value> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| self.bad(format!("memo entry {k} is not set")))
    }
    fn memo_put(&mut self, k: u32) -> Res<()> {
        let v = self.top()?.clone();
        if let Some(old) = self.memo.insert(k, v) {
            self.grave.push(old);
        }
        Ok(())
    }
    fn push(&mut self, v: Value) {
        self.stack.push(v)
    }
    fn int_line(&mut self) -> Res<Value> {
        let l = self.line()?;
        let l = l.trim_end_matches('L');
        match l {
            "00" => return Ok(Value::Bool(false)),
            "01" => return Ok(Value::Bool(true)),
            _ => {}
        }
        l.parse::<i64>()
            .map(Value::Int)
            .or_else(|_| {
                l.parse::<i128>()
                    .map(|v| Value::BigInt(Rc::from(&v.to_le_bytes()[..])))
            })
            .map_err(|_| self.bad(format!("integer '{l}'")))
    }

    fn run(&mut self) -> Res<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.bad(format!("pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    self.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.push(Value::Global(Rc::new((m.to_string(), n.to_string()))))
                        }
                        _ => return Err(self.bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'p' => {
                    let l = self.line()?;
                    let k = l.parse().map_err(|_| self.bad("PUT index"))?;
                    self.memo_put(k)?
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'g' => {
                    let l = self.line()?;
                    let k = l.parse().map_err(|_| self.bad("GET index"))?;
                    let v = self.memo_get(k)?;
                    self.push(v)
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    let v = self.memo_get(k)?;
                    self.push(v)
                }
                b'j' => {
                    let k = self.u32()?;
                    let v = self.memo_get(k)?;
                    self.push(v)
                }
                b')' => self.push(Value::Tuple(Rc::from(vec![]))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::from(items)))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.bad("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Rc::from(items)))
                }
                b']' => self.push(Value::List(Rc::default())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Rc::new(RefCell::new(pairs(items)))))
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                0x8f => self.push(Value::Set(Rc::default())),
                0x90 => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::Set(s) => s.borrow_mut().extend(items),
                        _ => return Err(self.bad("ADDITEMS to something other than a set")),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(Rc::new(RefCell::new(items))))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.text(n)?;
                    self.push(s)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.text(n)?;
                    self.push(s)
                }
                0x8d => {
                    let n = self.len64()?;
                    let s = self.text(n)?;
                    self.push(s)
                }
                b'C' | b'U' => {
                    let n = self.u8()? as usize;
                    let b = self.bytes(n)?;
                    self.push(b)
                }
                b'B' | b'T' => {
                    let n = self.u32()? as usize;
                    let b = self.bytes(n)?;
                    self.push(b)
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.bytes(n)?;
                    self.push(b)
                }
                b'S' => {
                    let l = self.line()?;
                    let b = unquote(&l).ok_or_else(|| self.bad("STRING is not quoted"))?;
                    self.push(Value::Bytes(Rc::from(b)))
                }
                b'I' => {
                    let v = self.int_line()?;
                    self.push(v)
                }
                b'L' => {
                    let v = self.int_line()?;
                    self.push(v)
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l.trim().parse().map_err(|_| self.bad("FLOAT"))?;
                    self.push(Value::Float(v))
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Value::Int(v))
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push(Value::Int(v))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let v = self.long(n)?;
                    self.push(v)
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let v = self.long(n)?;
                    self.push(v)
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v))
                }
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'N' => self.push(Value::None),
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.reduce(f, args)?;
                    self.push(v)
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.placeholder(cls, args)?;
                    self.push(v)
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.placeholder(cls, args)?;
                    self.push(v)
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        // An OrderedDict's attributes (a state dict's `_metadata`): not needed.
                        Value::Dict(_) => {}
                        Value::Object(o) => o.borrow_mut().state = Some(state),
                        other => {
                            let what = other.describe();
                            return Err(self.bad(format!("BUILD on {what}")));
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let s = self.storage(pid)?;
                    self.push(s)
                }
                _ => {
                    return Err(PickleError::ForbiddenOpcode {
                        opcode: op,
                        name: opcode_name(op),
                        at,
                    });
                }
            }
        }
    }

    fn long(&mut self, n: usize) -> Res<Value> {
        let bytes = self.take(n)?;
        if n > 8 {
            return Ok(Value::BigInt(Rc::from(bytes)));
        }
        let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
            [0xff; 8]
        } else {
            [0; 8]
        };
        buf[..n].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(buf)))
    }

    fn append(&mut self, items: Vec<Value>) -> Res<()> {
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().list.extend(items),
            _ => return Err(self.bad("APPEND to something other than a list")),
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Res<()> {
        match self.top()? {
            Value::Dict(d) => d.borrow_mut().extend(pairs(items)),
            Value::Object(o) => o.borrow_mut().dict.extend(pairs(items)),
            _ => return Err(self.bad("SETITEM on something other than a dict")),
        }
        Ok(())
    }

    /// `('storage', torch.<T>Storage, key, location, numel[, view_metadata])`.
    fn storage(&self, pid: Value) -> Res<Value> {
        let Value::Tuple(t) = pid else {
            return Err(self.bad(format!("persistent id is {}", pid.describe())));
        };
        let (kind, dtype, key, numel) = match &t[..] {
            [kind, dtype, key, _location, numel] => (kind, dtype, key, numel),
            [kind, dtype, key, _location, numel, Value::None] => (kind, dtype, key, numel),
            _ => return Err(self.bad("unsupported persistent id (a storage view?)")),
        };
        if kind.as_text().as_deref() != Some("storage") {
            return Err(self.bad("persistent id that is not a storage"));
        }
        let dtype = match dtype {
            Value::Global(g) if g.0 == "torch" && STORAGES.contains(&g.1.as_str()) => g.1.clone(),
            other => {
                let name = other.placeholder_name().unwrap_or_else(|| other.describe());
                return Err(PickleError::Placeholder(name, "a storage type"));
            }
        };
        match (key.as_text(), numel) {
            (Some(key), Value::Int(numel)) => Ok(Value::Storage(Rc::new(StorageRef {
                key,
                dtype,
                numel: *numel,
            }))),
            _ => Err(self.bad("storage key or size of the wrong type")),
        }
    }

    /// An inert object: `cls(*args)` recorded, never called.
    fn placeholder(&self, cls: Value, args: Value) -> Res<Value> {
        let Value::Global(g) = cls else {
            return Err(self.bad(format!("cannot apply {}", cls.describe())));
        };
        Ok(Value::Object(Rc::new(RefCell::new(Object {
            module: g.0.clone(),
            name: g.1.clone(),
            args: Some(args),
            ..Default::default()
        }))))
    }

    /// `REDUCE`: data for the few globals understood as data, a placeholder for the rest.
    fn reduce(&self, f: Value, args: Value) -> Res<Value> {
        let Value::Global(g) = &f else {
            return Err(self.bad(format!("cannot apply {}", f.describe())));
        };
        let Value::Tuple(a) = &args else {
            return Err(self.bad("REDUCE arguments are not a tuple"));
        };
        match (g.0.as_str(), g.1.as_str()) {
            ("collections", "OrderedDict") if a.is_empty() => Ok(Value::Dict(Rc::default())),
            ("torch._utils", "_rebuild_tensor_v2") => self.rebuild_tensor(a),
            ("torch._utils", "_rebuild_parameter") => match a.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                Some(other) => Err(PickleError::Placeholder(
                    other.placeholder_name().unwrap_or_else(|| other.describe()),
                    "a tensor",
                )),
                None => Err(self.bad("_rebuild_parameter without a tensor")),
            },
            ("_codecs", "encode") => match &a[..] {
                [Value::Str(s), enc]
                    if matches!(enc.as_text().as_deref(), Some("latin1" | "latin-1")) =>
                {
                    let b: Option<Vec<u8>> =
                        s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                    b.map(|b| Value::Bytes(Rc::from(b)))
                        .ok_or_else(|| self.bad("latin1 text outside Latin-1"))
                }
                _ => self.placeholder(f.clone(), args.clone()),
            },
            _ => self.placeholder(f.clone(), args.clone()),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    fn rebuild_tensor(&self, args: &[Value]) -> Res<Value> {
        let ints = |v: &Value| -> Option<Vec<i64>> {
            v.items()?
                .iter()
                .map(|x| match x {
                    Value::Int(i) => Some(*i),
                    _ => None,
                })
                .collect()
        };
        match args {
            [Value::Storage(s), Value::Int(offset), size, stride, ..] => {
                let (shape, stride) = ints(size)
                    .zip(ints(stride))
                    .ok_or_else(|| self.bad("tensor size or stride is not a tuple of ints"))?;
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: (**s).clone(),
                    offset: *offset,
                    shape,
                    stride,
                })))
            }
            [other, ..] if other.placeholder_name().is_some() => Err(PickleError::Placeholder(
                other.placeholder_name().unwrap(),
                "a tensor's storage",
            )),
            _ => Err(self.bad("_rebuild_tensor_v2 with unexpected arguments")),
        }
    }
}

/// The bytes of a protocol-0 `STRING` argument: `'text'` or `"text"` with Python escapes.
fn unquote(l: &str) -> Option<Vec<u8>> {
    let b = l.as_bytes();
    if b.len() < 2 || b[0] != b[b.len() - 1] || !(b[0] == b'\'' || b[0] == b'"') {
        return None;
    }
    let inner = &b[1..b.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] != b'\\' || i + 1 == inner.len() {
            out.push(inner[i]);
            i += 1;
            continue;
        }
        let c = inner[i + 1];
        i += 2;
        match c {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' if i + 2 <= inner.len() => {
                let h = std::str::from_utf8(&inner[i..i + 2]).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
    }
    Some(out)
}

fn pairs(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: Vec<Value>) -> Value {
        Value::List(Rc::new(RefCell::new(v)))
    }

    #[test]
    fn reads_plain_values_and_memo() {
        // {'a': (1, -2, 'x'), 'b': [True, None, 1.5]} with a memoised string reused.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'(', 0x8c, 1, b'a', b'q', 1];
        p.extend([b'K', 1, b'J']);
        p.extend((-2i32).to_le_bytes());
        p.extend([
            0x8c, 1, b'x', 0x87, 0x8c, 1, b'b', b']', b'(', 0x88, b'N', b'G',
        ]);
        p.extend(1.5f64.to_be_bytes());
        p.extend([b'e', b'u', b'.']);
        let v = load(&p).unwrap();
        let d = v.dict_items().unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0].1,
            Value::Tuple(Rc::from(vec![
                Value::Int(1),
                Value::Int(-2),
                Value::str("x")
            ]))
        );
        assert_eq!(
            d[1].1,
            list(vec![Value::Bool(true), Value::None, Value::Float(1.5)])
        );
    }

    #[test]
    fn os_system_becomes_an_inert_placeholder() {
        let p = b"\x80\x02cos\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01\x85R.";
        let v = load(p).unwrap();
        assert_eq!(v.placeholder_name().as_deref(), Some("os.system"));
        let Value::Object(o) = &v else { panic!() };
        assert_eq!(
            o.borrow().args,
            Some(Value::Tuple(Rc::from(vec![Value::str("touch")])))
        );
        // As a tensor's storage it is refused, by name.
        let p = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(cos\nsystem\n)RK\x00)))tR.";
        let e = load(p).unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains("os.system"), "{e}");
    }

    #[test]
    fn refuses_inst_and_truncation() {
        assert!(matches!(
            load(b"(i__builtin__\nlist\n."),
            Err(PickleError::ForbiddenOpcode { opcode: b'i', .. })
        ));
        assert!(matches!(
            load(b"\x80\x02X\x10\x00\x00\x00ab"),
            Err(PickleError::Truncated(_))
        ));
    }

    #[test]
    fn negative_long1_and_wide_ints() {
        assert_eq!(load(&[0x8a, 2, 0x00, 0xff, b'.']), Ok(Value::Int(-256)));
        let v = load(&[0x8a, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, b'.']).unwrap();
        assert!(matches!(v, Value::BigInt(b) if b.len() == 10));
    }

    #[test]
    fn memo_references_share_instead_of_copying() {
        // x = []; 24 times: x = (x, x). Copying would build 2^24 lists.
        let mut p = vec![0x80, 4, b']', 0x94];
        for i in 0..24u32 {
            for _ in 0..2 {
                p.push(b'j');
                p.extend(i.to_le_bytes());
            }
            p.extend([0x86, 0x94]);
        }
        p.push(b'.');
        let v = load(&p).unwrap();
        assert!(matches!(v, Value::Tuple(_)));
    }

    #[test]
    fn deep_leftovers_are_not_dropped_recursively() {
        // A 100,000-deep list left on the stack under the returned value.
        let mut p = vec![0x80, 4];
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.extend([b'K', 7, b'.']);
        assert_eq!(load(&p), Ok(Value::Int(7)));
        // The same list popped (POP) before the end.
        let n = p.len();
        p[n - 3] = b'0';
        p[n - 2] = b'K';
        p[n - 1] = 7;
        p.push(b'.');
        assert_eq!(load(&p), Ok(Value::Int(7)));
    }

    #[test]
    fn deep_and_recursive_structures_are_refused() {
        let mut deep = vec![0x80, 4];
        deep.extend(std::iter::repeat_n(b']', 100_000));
        deep.extend(std::iter::repeat_n(b'a', 99_999));
        deep.push(b'.');
        assert_eq!(load(&deep), Err(PickleError::TooDeep));
        // l = []; l.append(l)
        let cyc = b"\x80\x02]q\x00h\x00a.";
        assert_eq!(load(cyc), Err(PickleError::TooDeep));
        let mut ok = vec![0x80, 4];
        ok.extend(std::iter::repeat_n(b']', 500));
        ok.extend(std::iter::repeat_n(b'a', 499));
        ok.push(b'.');
        assert!(load(&ok).is_ok());
    }

    #[test]
    fn python2_strings_are_bytes_and_text_keys_match_both() {
        let p = b"(dp0\nS'data'\np1\nI3\nsU\x06labelsK\x07s.";
        let v = load(p).unwrap();
        assert_eq!(v.get("data"), Some(Value::Int(3)));
        assert_eq!(v.get("labels"), Some(Value::Int(7)));
    }

    #[test]
    fn load_prefix_reports_where_the_pickle_ends() {
        let two = b"\x80\x02K\x01.\x80\x02K\x02.";
        let (v, n) = load_prefix(two).unwrap();
        assert_eq!((v, n), (Value::Int(1), 5));
        assert_eq!(load(&two[n..]), Ok(Value::Int(2)));
    }
}
