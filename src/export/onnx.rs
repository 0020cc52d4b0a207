//! ONNX export (opset 17) from the model's own layers: one evaluation forward pass of an example
//! batch is recorded operation by operation ([`Ctx::recording`]), and each operation becomes
//! ONNX nodes; the weights become initialisers. The graph takes `[N, C, H, W]` floats in
//! [0, 1], normalises them (and resizes, if the run trained so) itself, and returns logits; the
//! batch dimension is free.

use super::Preprocess;
use super::onnx_proto::*;
use crate::error::{Error, Result};
use crate::models::layers::{Act, Op, Recorded};
use crate::models::{Ctx, Model};
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The opset written: LayerNormalization and HardSwish are in it; ReduceMean still takes its
/// axes as an attribute.
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
const IR_VERSION: i64 = 8;

/// A tensor's identity while converting: where its data starts and how it is laid out. Two
/// live tensors with the same key hold the same values (a view with other sizes or strides
/// gets another key).
type Key = (usize, Vec<i64>, Vec<i64>);

fn key(t: &Tensor) -> Key {
    (t.data_ptr() as usize, t.size(), t.stride())
}

/// ONNX nodes and initialisers under construction.
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: HashMap<Key, String>,
    /// The model's own variables, which operations may read directly (ConvNeXt's layer scale).
    variables: HashMap<Key, Tensor>,
    next: usize,
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: Some(i),
        r#type: attribute_type::INT,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: v.to_vec(),
        r#type: attribute_type::INTS,
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        s: v.as_bytes().to_vec(),
        r#type: attribute_type::STRING,
        ..Default::default()
    }
}

fn float(name: &str, f: f64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f: Some(f as f32),
        r#type: attribute_type::FLOAT,
        ..Default::default()
    }
}

impl Graph {
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    /// Adds a float32 constant (contiguous copy of `t`).
    fn constant(&mut self, hint: &str, t: &Tensor) -> String {
        let name = self.fresh(hint);
        let t = t
            .detach()
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous();
        let values = Vec::<f32>::try_from(t.flatten(0, -1)).expect("a float tensor");
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: t.size(),
            data_type: data_type::FLOAT,
            name: name.clone(),
            raw_data,
        });
        name
    }

    fn constant_i64(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: data_type::INT64,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    fn scalar(&mut self, v: f64) -> String {
        self.constant("c", &Tensor::from(v as f32))
    }

    /// Adds a node and returns its (single) output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute: attrs,
        });
        out
    }

    /// The name of a recorded input: an earlier output, or one of the model's variables.
    fn input(&mut self, t: &Tensor, op: &Op) -> Result<String> {
        let k = key(t);
        if let Some(n) = self.names.get(&k) {
            return Ok(n.clone());
        }
        if let Some(v) = self.variables.get(&k).map(Tensor::shallow_clone) {
            let name = self.constant("param", &v);
            self.names.insert(k, name.clone());
            return Ok(name);
        }
        Err(Error::Invalid(format!(
            "ONNX export: an input of {} was made by an operation the export does not know \
             (a model's forward pass must record every operation)",
            op.name()
        )))
    }

    fn activation(&mut self, act: Act, x: &str) -> String {
        match act {
            Act::Relu => self.node("Relu", &[x], vec![]),
            Act::Relu6 => {
                let (lo, hi) = (self.scalar(0.0), self.scalar(6.0));
                self.node("Clip", &[x, &lo, &hi], vec![])
            }
            Act::HardSwish => self.node("HardSwish", &[x], vec![]),
            Act::HardSigmoid => self.node(
                "HardSigmoid",
                &[x],
                vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)],
            ),
            Act::Sigmoid => self.node("Sigmoid", &[x], vec![]),
            Act::Silu => {
                let s = self.node("Sigmoid", &[x], vec![]);
                self.node("Mul", &[x, &s], vec![])
            }
            // x * 0.5 * (1 + erf(x / sqrt 2)): opset 17 has no Gelu.
            Act::Gelu => {
                let r2 = self.scalar(std::f64::consts::SQRT_2);
                let d = self.node("Div", &[x, &r2], vec![]);
                let e = self.node("Erf", &[&d], vec![]);
                let one = self.scalar(1.0);
                let a = self.node("Add", &[&e, &one], vec![]);
                let m = self.node("Mul", &[x, &a], vec![]);
                let half = self.scalar(0.5);
                self.node("Mul", &[&m, &half], vec![])
            }
            Act::None => x.to_string(),
        }
    }

    /// Writes one recorded operation; returns the name of its output.
    fn convert(&mut self, r: &Recorded) -> Result<String> {
        let mut xs = Vec::new();
        for t in &r.inputs {
            xs.push(self.input(t, &r.op)?);
        }
        let x = xs[0].as_str();
        Ok(match &r.op {
            Op::Conv {
                weight,
                bias,
                stride,
                padding,
                groups,
            } => self.conv(x, weight, bias.as_ref(), (*stride, *padding, *groups)),
            Op::BatchNorm {
                weight,
                bias,
                mean,
                var,
                eps,
            } => self.batch_norm(x, [weight, bias, mean, var], *eps),
            Op::Linear {
                weight,
                bias,
                scale,
            } => self.linear(x, weight, bias.as_ref(), *scale),
            Op::LayerNorm {
                weight,
                bias,
                eps,
                channels,
            } => self.layer_norm(x, (weight, bias), *eps, *channels),
            Op::Act(a) => self.activation(*a, x),
            Op::Add => self.node("Add", &[x, &xs[1]], vec![]),
            Op::Mul => self.node("Mul", &[x, &xs[1]], vec![]),
            Op::Concat { axis } => {
                let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
                self.node("Concat", &refs, vec![int("axis", *axis)])
            }
            Op::MeanHw { keepdim } => self.node(
                "ReduceMean",
                &[x],
                vec![ints("axes", &[2, 3]), int("keepdims", i64::from(*keepdim))],
            ),
            Op::MaxHw { keepdim } => self.node(
                "ReduceMax",
                &[x],
                vec![ints("axes", &[2, 3]), int("keepdims", i64::from(*keepdim))],
            ),
            Op::MaxPool {
                kernel,
                stride,
                padding,
            } => {
                let p = *padding;
                let attrs = vec![
                    ints("kernel_shape", &[*kernel, *kernel]),
                    ints("strides", &[*stride, *stride]),
                    ints("pads", &[p, p, p, p]),
                ];
                self.node("MaxPool", &[x], attrs)
            }
            Op::AvgPool { kernel, stride } => {
                let attrs = vec![
                    ints("kernel_shape", &[*kernel, *kernel]),
                    ints("strides", &[*stride, *stride]),
                ];
                self.node("AveragePool", &[x], attrs)
            }
            Op::AdaptiveAvgPool { size } => self.adaptive_avg_pool(x, &r.inputs[0], *size),
            Op::Flatten => self.node("Flatten", &[x], vec![int("axis", 1)]),
            Op::Permute(dims) => self.node("Transpose", &[x], vec![ints("perm", dims)]),
            Op::SubsamplePadChannels { extra } => {
                let starts = self.constant_i64("starts", &[0, 0]);
                let ends = self.constant_i64("ends", &[i64::MAX, i64::MAX]);
                let axes = self.constant_i64("axes", &[2, 3]);
                let steps = self.constant_i64("steps", &[2, 2]);
                let s = self.node("Slice", &[x, &starts, &ends, &axes, &steps], vec![]);
                let half = extra / 2;
                let pads = self.constant_i64("pads", &[0, half, 0, 0, 0, extra - half, 0, 0]);
                self.node("Pad", &[&s, &pads], vec![])
            }
        })
    }

    /// `Conv` with square kernel, (stride, padding, groups).
    fn conv(
        &mut self,
        x: &str,
        w: &Tensor,
        b: Option<&Tensor>,
        geometry: (i64, i64, i64),
    ) -> String {
        let (stride, p, groups) = geometry;
        let mut inputs = vec![x.to_string(), self.constant("conv_w", w)];
        if let Some(b) = b {
            inputs.push(self.constant("conv_b", b));
        }
        let attrs = vec![
            ints("kernel_shape", &w.size()[2..]),
            ints("strides", &[stride, stride]),
            ints("pads", &[p, p, p, p]),
            int("group", groups),
        ];
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node("Conv", &refs, attrs)
    }

    /// Evaluation-mode `BatchNormalization` from [weight, bias, running mean, running var].
    fn batch_norm(&mut self, x: &str, params: [&Tensor; 4], eps: f64) -> String {
        let hints = ["bn_w", "bn_b", "bn_mean", "bn_var"];
        let names: Vec<String> = hints
            .iter()
            .zip(params)
            .map(|(h, t)| self.constant(h, t))
            .collect();
        let inputs = [x, &names[0], &names[1], &names[2], &names[3]];
        self.node("BatchNormalization", &inputs, vec![float("epsilon", eps)])
    }

    /// `(x W^T + b) * scale` as MatMul, Add and Mul: valid for any number of leading
    /// dimensions (ConvNeXt applies its linear layers at every position).
    fn linear(&mut self, x: &str, w: &Tensor, b: Option<&Tensor>, scale: f64) -> String {
        let wt = self.constant("fc_w", &w.tr());
        let mut y = self.node("MatMul", &[x, &wt], vec![]);
        if let Some(b) = b {
            let b = self.constant("fc_b", b);
            y = self.node("Add", &[&y, &b], vec![]);
        }
        if scale != 1.0 {
            let s = self.scalar(scale);
            y = self.node("Mul", &[&y, &s], vec![]);
        }
        y
    }

    /// `LayerNormalization` over the last axis; over channels (NCHW) between two Transposes.
    fn layer_norm(
        &mut self,
        x: &str,
        (w, b): (&Tensor, &Tensor),
        eps: f64,
        channels: bool,
    ) -> String {
        let (w, b) = (self.constant("ln_w", w), self.constant("ln_b", b));
        let attrs = vec![int("axis", -1), float("epsilon", eps)];
        if !channels {
            return self.node("LayerNormalization", &[x, &w, &b], attrs);
        }
        let t = self.node("Transpose", &[x], vec![ints("perm", &[0, 2, 3, 1])]);
        let n = self.node("LayerNormalization", &[&t, &w, &b], attrs);
        self.node("Transpose", &[&n], vec![ints("perm", &[0, 3, 1, 2])])
    }

    /// Adaptive average pooling of an `H` x `W` input to `size` x `size` as what it is, a fixed
    /// linear map of each channel's pixels: Reshape to `[N, C, H W]`, MatMul by the `[H W,
    /// size^2]` pooling matrix, Reshape back.
    fn adaptive_avg_pool(&mut self, x: &str, input: &Tensor, size: i64) -> String {
        let s = input.size();
        let (h, w) = (s[2], s[3]);
        let eye = Tensor::eye(h * w, (Kind::Float, Device::Cpu)).reshape([h * w, 1, h, w]);
        let pooled = eye
            .adaptive_avg_pool2d([size, size])
            .reshape([h * w, size * size]);
        let m = self.constant("pool_matrix", &pooled);
        let flat = self.constant_i64("shape", &[0, 0, -1]);
        let back = self.constant_i64("shape", &[0, 0, size, size]);
        let r = self.node("Reshape", &[x, &flat], vec![]);
        let y = self.node("MatMul", &[&r, &m], vec![]);
        self.node("Reshape", &[&y, &back], vec![])
    }

    /// `(x - mean) / std`, then the resize: the graph's first nodes.
    fn preprocess(&mut self, x: &str, p: &Preprocess) -> String {
        let c = p.mean.len() as i64;
        let stat = |v: &[f64]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .reshape([1, c, 1, 1])
        };
        let mean = self.constant("mean", &stat(&p.mean));
        let std = self.constant("std", &stat(&p.std));
        let centred = self.node("Sub", &[x, &mean], vec![]);
        let y = self.node("Div", &[&centred, &std], vec![]);
        match p.resize {
            None => y,
            Some(side) => self.resize(&y, side),
        }
    }

    /// Bilinear resize of `[N, C, H, W]` to `side` x `side` with PyTorch's `align_corners =
    /// False` sampling (`pytorch_half_pixel`), the batch and channels kept.
    fn resize(&mut self, x: &str, side: i64) -> String {
        let shape = self.node("Shape", &[x], vec![]);
        let starts = self.constant_i64("starts", &[0]);
        let ends = self.constant_i64("ends", &[2]);
        let nc = self.node("Slice", &[&shape, &starts, &ends], vec![]);
        let hw = self.constant_i64("hw", &[side, side]);
        let sizes = self.node("Concat", &[&nc, &hw], vec![int("axis", 0)]);
        let attrs = vec![
            string("mode", "linear"),
            string("coordinate_transformation_mode", "pytorch_half_pixel"),
        ];
        self.node("Resize", &[x, "", "", &sizes], attrs)
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => DimValue::DimValue(*v),
                None => DimValue::DimParam("N".into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

/// The ONNX model of `model` on `side` x `side` inputs, with `metadata` (classes, statistics)
/// in its metadata properties.
///
/// # Errors
/// The forward pass used an operation the export cannot write.
pub fn model_proto(
    model: &Model,
    pre: &Preprocess,
    side: i64,
    metadata: &[(&str, String)],
) -> Result<ModelProto> {
    let c = model.spec.in_channels;
    let mut g = Graph {
        nodes: Vec::new(),
        initializers: Vec::new(),
        names: HashMap::new(),
        variables: model
            .vs
            .variables()
            .into_values()
            .map(|t| (key(&t), t))
            .collect(),
        next: 0,
    };
    let first = g.preprocess("input", pre);
    // Two examples, so that nothing in the pass is specialised to a batch of one.
    let net_side = pre.resize.unwrap_or(side);
    let x = Tensor::rand([2, c, net_side, net_side], (Kind::Float, model.device()));
    g.names.insert(key(&x), first);
    let ctx = Ctx::recording();
    let logits = tch::no_grad(|| model.forward(&x, &ctx));
    let ops = ctx.take_ops();
    for r in &ops {
        let name = g.convert(r)?;
        g.names.insert(key(&r.output), name);
    }
    let out = g.names.get(&key(&logits)).cloned().ok_or_else(|| {
        Error::Invalid(format!(
            "ONNX export: the logits of {} come from an operation that was not recorded",
            model.spec.name
        ))
    })?;
    g.nodes.push(NodeProto {
        input: vec![out],
        output: vec!["logits".into()],
        name: "logits".into(),
        op_type: "Identity".into(),
        attribute: vec![],
    });
    let classes = logits.size()[1];
    let graph = GraphProto {
        node: g.nodes,
        name: model.spec.name.clone(),
        initializer: g.initializers,
        input: vec![value_info(
            "input",
            &[None, Some(c), Some(side), Some(side)],
        )],
        output: vec![value_info("logits", &[None, Some(classes)])],
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        producer_name: "convkit".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{}: [N, {c}, {side}, {side}] floats in [0, 1] -> [N, {classes}] logits",
            model.spec.name
        ),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.to_string(),
                value: v.clone(),
            })
            .collect(),
    })
}

/// Writes `model` as an ONNX file at `out`, atomically.
///
/// # Errors
/// As [`model_proto`], or the file cannot be written.
pub fn write_model(
    model: &Model,
    pre: &Preprocess,
    side: i64,
    metadata: &[(&str, String)],
    out: &Path,
) -> Result<()> {
    let proto = model_proto(model, pre, side, metadata)?;
    crate::util::atomic_write_bytes(out, &proto.encode_to_vec())?;
    Ok(())
}
