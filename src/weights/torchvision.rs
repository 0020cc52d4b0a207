//! torchvision's official ImageNet weights, as its `Weights` enums (torchvision 0.26.0)
//! describe them: the file (whose name carries the start of its SHA-256, which torchvision
//! checks too), the evaluation preprocessing that belongs to it, its published ImageNet
//! accuracy, and the state-dict name of its classifier. `tests/weights.rs` checks every row
//! against torchvision's own enums.

/// The ImageNet statistics every torchvision weight set normalises with.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// How an image is resized (torchvision's `InterpolationMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    Bilinear,
    Bicubic,
}

/// torchvision's `ImageClassification` evaluation transform: the shorter side resized to
/// `resize` pixels, the centre `crop` x `crop` kept, then normalised with ImageNet's mean and
/// standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Preprocess {
    pub resize: u32,
    pub crop: u32,
    pub interpolation: Interpolation,
}

/// One torchvision weight set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Pretrained {
    /// convkit's name: the model's for IMAGENET1K_V1, with `-v2` for IMAGENET1K_V2.
    pub name: &'static str,
    /// The registry model it belongs to.
    pub model: &'static str,
    /// torchvision's enum member, e.g. `ResNet50_Weights.IMAGENET1K_V2`.
    pub torchvision: &'static str,
    /// File name under https://download.pytorch.org/models/.
    pub file: &'static str,
    pub parameters: i64,
    /// Published ImageNet-1K validation accuracy (%), single crop with `preprocess`.
    pub top1: f64,
    pub top5: f64,
    pub preprocess: Preprocess,
    /// State-dict prefix of the last linear layer, which transfer learning replaces.
    pub classifier: &'static str,
    /// torchvision's `DEFAULT` for the model.
    pub default: bool,
}

impl Pretrained {
    /// The expected SHA-256 prefix: the hex digits after the file name's last `-`.
    pub fn sha256_prefix(&self) -> &'static str {
        let stem = self.file.trim_end_matches(".pth");
        stem.rsplit('-').next().unwrap_or(stem)
    }
    pub fn url(&self) -> String {
        format!("https://download.pytorch.org/models/{}", self.file)
    }
}

/// A weight set by convkit's name (`resnet50-v2`) or torchvision's
/// (`ResNet50_Weights.IMAGENET1K_V2`; `ResNet50_Weights.DEFAULT`).
pub fn find(name: &str) -> Option<&'static Pretrained> {
    let (enum_name, member) = name.split_once('.').unwrap_or((name, ""));
    PRETRAINED.iter().find(|p| {
        p.name == name
            || p.torchvision == name
            || (member == "DEFAULT"
                && p.default
                && p.torchvision.split('.').next() == Some(enum_name))
    })
}

/// Every weight set convkit knows, in `convkit weights list` order.
pub const PRETRAINED: [Pretrained; 26] = [
    Pretrained {
        name: "resnet18",
        model: "resnet18",
        torchvision: "ResNet18_Weights.IMAGENET1K_V1",
        file: "resnet18-f37072fd.pth",
        parameters: 11689512,
        top1: 69.758,
        top5: 89.078,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: true,
    },
    Pretrained {
        name: "resnet34",
        model: "resnet34",
        torchvision: "ResNet34_Weights.IMAGENET1K_V1",
        file: "resnet34-b627a593.pth",
        parameters: 21797672,
        top1: 73.314,
        top5: 91.42,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: true,
    },
    Pretrained {
        name: "resnet50",
        model: "resnet50",
        torchvision: "ResNet50_Weights.IMAGENET1K_V1",
        file: "resnet50-0676ba61.pth",
        parameters: 25557032,
        top1: 76.13,
        top5: 92.862,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: false,
    },
    Pretrained {
        name: "resnet50-v2",
        model: "resnet50",
        torchvision: "ResNet50_Weights.IMAGENET1K_V2",
        file: "resnet50-11ad3fa6.pth",
        parameters: 25557032,
        top1: 80.858,
        top5: 95.434,
        preprocess: Preprocess {
            resize: 232,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: true,
    },
    Pretrained {
        name: "resnet101",
        model: "resnet101",
        torchvision: "ResNet101_Weights.IMAGENET1K_V1",
        file: "resnet101-63fe2227.pth",
        parameters: 44549160,
        top1: 77.374,
        top5: 93.546,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: false,
    },
    Pretrained {
        name: "resnet101-v2",
        model: "resnet101",
        torchvision: "ResNet101_Weights.IMAGENET1K_V2",
        file: "resnet101-cd907fc2.pth",
        parameters: 44549160,
        top1: 81.886,
        top5: 95.78,
        preprocess: Preprocess {
            resize: 232,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: true,
    },
    Pretrained {
        name: "resnet152",
        model: "resnet152",
        torchvision: "ResNet152_Weights.IMAGENET1K_V1",
        file: "resnet152-394f9c45.pth",
        parameters: 60192808,
        top1: 78.312,
        top5: 94.046,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: false,
    },
    Pretrained {
        name: "resnet152-v2",
        model: "resnet152",
        torchvision: "ResNet152_Weights.IMAGENET1K_V2",
        file: "resnet152-f82ba261.pth",
        parameters: 60192808,
        top1: 82.284,
        top5: 96.002,
        preprocess: Preprocess {
            resize: 232,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: true,
    },
    Pretrained {
        name: "resnext50_32x4d",
        model: "resnext50_32x4d",
        torchvision: "ResNeXt50_32X4D_Weights.IMAGENET1K_V1",
        file: "resnext50_32x4d-7cdf4587.pth",
        parameters: 25028904,
        top1: 77.618,
        top5: 93.698,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: false,
    },
    Pretrained {
        name: "resnext50_32x4d-v2",
        model: "resnext50_32x4d",
        torchvision: "ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
        file: "resnext50_32x4d-1a0047aa.pth",
        parameters: 25028904,
        top1: 81.198,
        top5: 95.34,
        preprocess: Preprocess {
            resize: 232,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: true,
    },
    Pretrained {
        name: "wide_resnet50_2",
        model: "wide_resnet50_2",
        torchvision: "Wide_ResNet50_2_Weights.IMAGENET1K_V1",
        file: "wide_resnet50_2-95faca4d.pth",
        parameters: 68883240,
        top1: 78.468,
        top5: 94.086,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: false,
    },
    Pretrained {
        name: "wide_resnet50_2-v2",
        model: "wide_resnet50_2",
        torchvision: "Wide_ResNet50_2_Weights.IMAGENET1K_V2",
        file: "wide_resnet50_2-9ba9bcbe.pth",
        parameters: 68883240,
        top1: 81.602,
        top5: 95.758,
        preprocess: Preprocess {
            resize: 232,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: true,
    },
    Pretrained {
        name: "vgg16_bn",
        model: "vgg16_bn",
        torchvision: "VGG16_BN_Weights.IMAGENET1K_V1",
        file: "vgg16_bn-6c64b313.pth",
        parameters: 138365992,
        top1: 73.36,
        top5: 91.516,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier.6",
        default: true,
    },
    Pretrained {
        name: "densenet121",
        model: "densenet121",
        torchvision: "DenseNet121_Weights.IMAGENET1K_V1",
        file: "densenet121-a639ec97.pth",
        parameters: 7978856,
        top1: 74.434,
        top5: 91.972,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier",
        default: true,
    },
    Pretrained {
        name: "mobilenet_v2",
        model: "mobilenet_v2",
        torchvision: "MobileNet_V2_Weights.IMAGENET1K_V1",
        file: "mobilenet_v2-b0353104.pth",
        parameters: 3504872,
        top1: 71.878,
        top5: 90.286,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier.1",
        default: false,
    },
    Pretrained {
        name: "mobilenet_v2-v2",
        model: "mobilenet_v2",
        torchvision: "MobileNet_V2_Weights.IMAGENET1K_V2",
        file: "mobilenet_v2-7ebf99e0.pth",
        parameters: 3504872,
        top1: 72.154,
        top5: 90.822,
        preprocess: Preprocess {
            resize: 232,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier.1",
        default: true,
    },
    Pretrained {
        name: "mobilenet_v3_small",
        model: "mobilenet_v3_small",
        torchvision: "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        file: "mobilenet_v3_small-047dcff4.pth",
        parameters: 2542856,
        top1: 67.668,
        top5: 87.402,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier.3",
        default: true,
    },
    Pretrained {
        name: "mobilenet_v3_large",
        model: "mobilenet_v3_large",
        torchvision: "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
        file: "mobilenet_v3_large-8738ca79.pth",
        parameters: 5483032,
        top1: 74.042,
        top5: 91.34,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier.3",
        default: false,
    },
    Pretrained {
        name: "mobilenet_v3_large-v2",
        model: "mobilenet_v3_large",
        torchvision: "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        file: "mobilenet_v3_large-5c1a4163.pth",
        parameters: 5483032,
        top1: 75.274,
        top5: 92.566,
        preprocess: Preprocess {
            resize: 232,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier.3",
        default: true,
    },
    Pretrained {
        name: "efficientnet_b0",
        model: "efficientnet_b0",
        torchvision: "EfficientNet_B0_Weights.IMAGENET1K_V1",
        file: "efficientnet_b0_rwightman-7f5810bc.pth",
        parameters: 5288548,
        top1: 77.692,
        top5: 93.532,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bicubic,
        },
        classifier: "classifier.1",
        default: true,
    },
    Pretrained {
        name: "efficientnet_b3",
        model: "efficientnet_b3",
        torchvision: "EfficientNet_B3_Weights.IMAGENET1K_V1",
        file: "efficientnet_b3_rwightman-b3899882.pth",
        parameters: 12233232,
        top1: 82.008,
        top5: 96.054,
        preprocess: Preprocess {
            resize: 320,
            crop: 300,
            interpolation: Interpolation::Bicubic,
        },
        classifier: "classifier.1",
        default: true,
    },
    Pretrained {
        name: "efficientnet_v2_s",
        model: "efficientnet_v2_s",
        torchvision: "EfficientNet_V2_S_Weights.IMAGENET1K_V1",
        file: "efficientnet_v2_s-dd5fe13b.pth",
        parameters: 21458488,
        top1: 84.228,
        top5: 96.878,
        preprocess: Preprocess {
            resize: 384,
            crop: 384,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier.1",
        default: true,
    },
    Pretrained {
        name: "regnet_y_800mf",
        model: "regnet_y_800mf",
        torchvision: "RegNet_Y_800MF_Weights.IMAGENET1K_V1",
        file: "regnet_y_800mf-1b27b58c.pth",
        parameters: 6432512,
        top1: 76.42,
        top5: 93.136,
        preprocess: Preprocess {
            resize: 256,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: false,
    },
    Pretrained {
        name: "regnet_y_800mf-v2",
        model: "regnet_y_800mf",
        torchvision: "RegNet_Y_800MF_Weights.IMAGENET1K_V2",
        file: "regnet_y_800mf-58fc7688.pth",
        parameters: 6432512,
        top1: 78.828,
        top5: 94.502,
        preprocess: Preprocess {
            resize: 232,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "fc",
        default: true,
    },
    Pretrained {
        name: "convnext_tiny",
        model: "convnext_tiny",
        torchvision: "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        file: "convnext_tiny-983f1562.pth",
        parameters: 28589128,
        top1: 82.52,
        top5: 96.146,
        preprocess: Preprocess {
            resize: 236,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier.2",
        default: true,
    },
    Pretrained {
        name: "convnext_small",
        model: "convnext_small",
        torchvision: "ConvNeXt_Small_Weights.IMAGENET1K_V1",
        file: "convnext_small-0c510722.pth",
        parameters: 50223688,
        top1: 83.616,
        top5: 96.65,
        preprocess: Preprocess {
            resize: 230,
            crop: 224,
            interpolation: Interpolation::Bilinear,
        },
        classifier: "classifier.2",
        default: true,
    },
];
