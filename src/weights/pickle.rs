//! A pickle reader that understands only what a PyTorch state dict needs.
//!
//! Pickle is a program for a stack machine, and Python's own unpickler will import and call
//! anything a file names. This reader interprets the opcodes PyTorch's `torch.save` emits for
//! plain data (protocol 2-5: tuples, lists, dicts, strings, numbers, memo) and accepts a short
//! list of globals (`OrderedDict`, the tensor-rebuild functions, storage types); any other
//! opcode or global is refused with an error before anything is built. Nothing in the file is
//! ever executed.

use std::collections::HashMap;

/// A storage reference from a `BINPERSID`: the bytes live in the archive's `data/<key>` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    /// The storage type's name, e.g. `FloatStorage`.
    pub dtype: String,
    pub numel: i64,
}

/// A tensor view of a storage, as `torch._utils._rebuild_tensor_v2` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub shape: Vec<i64>,
    pub stride: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Keeps insertion order (state dicts are ordered).
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// The only globals a state dict may name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(&'static str),
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

fn allowed_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", s) => STORAGES
            .iter()
            .find(|x| **x == s)
            .map(|x| Global::Storage(x)),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error(
        "refused: the pickle uses opcode {opcode:#04x} ('{name}') at byte {at}, which a state dict never needs"
    )]
    ForbiddenOpcode {
        opcode: u8,
        name: &'static str,
        at: usize,
    },
    #[error(
        "refused: the pickle names the global '{0}.{1}', which is not part of a state dict (it was not imported or run)"
    )]
    ForbiddenGlobal(String, String),
    #[error("the pickle ends early (at byte {0}): the file is truncated")]
    Truncated(usize),
    #[error("malformed pickle at byte {at}: {problem}")]
    Malformed { at: usize, problem: String },
}

/// Opcodes Python can emit that we never accept, named for the error message.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'P' => "PERSID",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'F' => "FLOAT",
        0x82..=0x84 => "EXT",
        _ => "unknown",
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

type Res<T> = Result<T, PickleError>;

/// Runs the pickle in `data` and returns the object it builds.
pub fn load(data: &[u8]) -> Res<Value> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    m.run()
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
        String::from_utf8(bytes.to_vec())
            .map(Value::Str)
            .map_err(|_| self.bad("string is not UTF-8"))
    }
    fn pop(&mut self) -> Res<Value> {
        self.stack.pop().ok_or_else(|| self.bad("stack underflow"))
    }
    fn top(&mut self) -> Res<&mut Value> {
        let at = self.pos;
        self.stack.last_mut().ok_or(PickleError::Malformed {
            at,
            problem: "stack underflow".into(),
        })
    }
    /// Everything pushed since the last MARK.
    fn pop_mark(&mut self) -> Res<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| self.bad("no MARK"))?;
        if m > self.stack.len() {
            return Err(self.bad("MARK above the stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn memo_get(&self, k: u32) -> Res<Value> {
        self.memo
            .get(&k)
            .cloned()
            .ok_or_else(|| self.bad(format!("memo entry {k} is not set")))
    }
    fn memo_put(&mut self, k: u32) -> Res<()> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.bad("empty stack"))?;
        self.memo.insert(k, v);
        Ok(())
    }
    fn global(&mut self, module: String, name: String) -> Res<Value> {
        allowed_global(&module, &name)
            .map(Value::Global)
            .ok_or(PickleError::ForbiddenGlobal(module, name))
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
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    let g = self.global(module, name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(m, n)?;
                            self.stack.push(g)
                        }
                        _ => return Err(self.bad("STACK_GLOBAL needs two strings")),
                    }
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
                b'h' => {
                    let k = self.u8()? as u32;
                    let v = self.memo_get(k)?;
                    self.stack.push(v)
                }
                b'j' => {
                    let k = self.u32()?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v)
                }
                b')' => self.stack.push(Value::Tuple(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.bad("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b']' => self.stack.push(Value::List(vec![])),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.stack.push(Value::Dict(vec![])),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(pairs(items)))
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
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.text(n)?;
                    self.stack.push(s)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.text(n)?;
                    self.stack.push(s)
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let s = self.text(n)?;
                    self.stack.push(s)
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Value::Int(v))
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.stack.push(Value::Int(v))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let v = self.long(n)?;
                    self.stack.push(v)
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v))
                }
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD sets an object's state. The only object that gets one in a state
                    // dict is the OrderedDict (its `_metadata`), which we do not need.
                    self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        return Err(self.bad("BUILD on something other than a dict"));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let s = self.storage(pid)?;
                    self.stack.push(s)
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
        if n > 8 {
            return Err(self.bad("integer wider than 64 bits"));
        }
        let bytes = self.take(n)?;
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
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(self.bad("APPEND to something other than a list")),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Res<()> {
        match self.top()? {
            Value::Dict(d) => {
                d.extend(pairs(items));
                Ok(())
            }
            _ => Err(self.bad("SETITEM on something other than a dict")),
        }
    }

    /// `('storage', StorageType, key, location, numel)`.
    fn storage(&self, pid: Value) -> Res<Value> {
        let Value::Tuple(t) = pid else {
            return Err(self.bad("persistent id is not a tuple"));
        };
        match t.as_slice() {
            [
                Value::Str(kind),
                Value::Global(Global::Storage(dtype)),
                Value::Str(key),
                _location,
                Value::Int(numel),
            ] if kind == "storage" => Ok(Value::Storage(StorageRef {
                key: key.clone(),
                dtype: dtype.to_string(),
                numel: *numel,
            })),
            _ => Err(self.bad(format!("unsupported persistent id {t:?}"))),
        }
    }

    fn call(&self, f: Value, args: Value) -> Res<Value> {
        let Value::Tuple(args) = args else {
            return Err(self.bad("REDUCE arguments are not a tuple"));
        };
        match f {
            Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(vec![])),
            Value::Global(Global::RebuildTensor) => self.rebuild_tensor(&args),
            Value::Global(Global::RebuildParameter) => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.bad("_rebuild_parameter without a tensor")),
            },
            other => Err(self.bad(format!("cannot call {other:?}"))),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    fn rebuild_tensor(&self, args: &[Value]) -> Res<Value> {
        let ints = |v: &Value| -> Option<Vec<i64>> {
            match v {
                Value::Tuple(t) => t
                    .iter()
                    .map(|x| match x {
                        Value::Int(i) => Some(*i),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            }
        };
        match args {
            [Value::Storage(s), Value::Int(offset), size, stride, ..] => {
                let (shape, stride) = ints(size)
                    .zip(ints(stride))
                    .ok_or_else(|| self.bad("tensor size or stride is not a tuple of ints"))?;
                Ok(Value::Tensor(TensorRef {
                    storage: s.clone(),
                    offset: *offset,
                    shape,
                    stride,
                }))
            }
            _ => Err(self.bad("_rebuild_tensor_v2 with unexpected arguments")),
        }
    }
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
        let Value::Dict(d) = v else { panic!() };
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0].1,
            Value::Tuple(vec![Value::Int(1), Value::Int(-2), Value::Str("x".into())])
        );
        assert_eq!(
            d[1].1,
            Value::List(vec![Value::Bool(true), Value::None, Value::Float(1.5)])
        );
    }

    #[test]
    fn refuses_os_system_before_calling_anything() {
        let p = b"\x80\x02cos\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01\x85R.";
        assert_eq!(
            load(p),
            Err(PickleError::ForbiddenGlobal("os".into(), "system".into()))
        );
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
    fn negative_long1() {
        assert_eq!(load(&[0x8a, 2, 0x00, 0xff, b'.']), Ok(Value::Int(-256)));
    }
}
