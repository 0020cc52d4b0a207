//! Parameter groups: the units that are frozen, unfrozen and given their own learning rate.
//! ResNets split into `stem`, `layer1`..`layer4` and `head` (fastai's and timm's split); other
//! registry models into their stem, each numbered stage (`features.0`, `stages.1`, ...) and head.

use crate::models::{Ctx, Model};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    /// Variable names (state-dict keys) in this group.
    pub vars: Vec<String>,
}

/// The model's parameter groups in input order: one per declared part
/// ([`crate::models::Model::parts`]: stem, stages, any part an objective added, `head`), each
/// with the variables it owns. A variable no part owns (a network that declares too little)
/// gets a group named after its first name component, before the head, so nothing is left
/// out of freezing.
pub fn param_groups(model: &Model) -> Vec<Group> {
    let parts = model.parts();
    let mut groups: Vec<Group> = parts
        .iter()
        .map(|p| Group {
            name: p.name.clone(),
            vars: vec![],
        })
        .collect();
    let mut names: Vec<String> = model.vs.variables().into_keys().collect();
    names.sort();
    for var in names {
        match parts.iter().position(|p| p.owns(&var)) {
            Some(i) => groups[i].vars.push(var),
            None => {
                let name = var.split('.').next().unwrap_or_default().to_string();
                match groups.iter_mut().find(|g| g.name == name) {
                    Some(g) => g.vars.push(var),
                    None => {
                        let at = groups.len().saturating_sub(1);
                        groups.insert(
                            at,
                            Group {
                                name,
                                vars: vec![var],
                            },
                        );
                    }
                }
            }
        }
    }
    groups.retain(|g| !g.vars.is_empty());
    groups
}

/// Names of the model's BatchNorm layers, found by tracing one small forward pass.
pub fn batchnorm_layers(model: &Model) -> Vec<String> {
    let ctx = Ctx::tracing();
    let c = model.spec.in_channels;
    let x = Tensor::zeros([1, c, 64, 64], (Kind::Float, model.device()));
    let _ = tch::no_grad(|| model.forward(&x, &ctx));
    ctx.take_trace()
        .into_iter()
        .filter(|l| l.kind == "batchnorm")
        .map(|l| l.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ModelSpec, build};

    fn names(model: &str) -> Vec<String> {
        let m = build(&ModelSpec::new(model, 10), tch::Device::Cpu).unwrap();
        param_groups(&m).into_iter().map(|g| g.name).collect()
    }

    #[test]
    fn groups_are_the_declared_parts_in_input_order() {
        assert_eq!(
            names("resnet18"),
            ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
        );
        assert_eq!(
            names("airnet"),
            ["stem", "groups.0", "groups.1", "groups.2", "head"]
        );
        assert_eq!(
            names("cnn"),
            ["features.0", "features.1", "features.2", "head"]
        );
        let mut m = build(&ModelSpec::new("resnet20", 10), tch::Device::Cpu).unwrap();
        let _ = tch::nn::linear(m.vs.root() / "head" / "0", 64, 8, Default::default());
        m.add_part("projection", "head");
        let groups = param_groups(&m);
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            ["stem", "layer1", "layer2", "layer3", "projection", "head"]
        );
        assert_eq!(groups[4].vars, ["head.0.bias", "head.0.weight"]);
        assert_eq!(groups[5].vars, ["fc.bias", "fc.weight"]);
    }
}
