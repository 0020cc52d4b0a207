//! Data-dependent and structured initialisations used by fast CIFAR training (airbench, Jordan
//! 2024): a first convolution that whitens image patches, and Dirac (identity) filters.

use tch::{Kind, Tensor};

/// Weights `[2 C k k, C, k, k]` of a k x k convolution that whitens the patches of `images`
/// (float NCHW, already normalised as the network sees them): each filter is an eigenvector v of
/// the patches' second-moment matrix scaled by 1 / sqrt(lambda + eps), largest eigenvalue first,
/// followed by the same filters negated (so a following GELU/ReLU keeps both signs).
pub fn patch_whitening(images: &Tensor, k: i64, eps: f64) -> Tensor {
    let c = images.size()[1];
    let d = c * k * k;
    let patches = images
        .to_kind(Kind::Double)
        .unfold(2, k, 1)
        .unfold(3, k, 1) // [N, C, H', W', k, k]
        .permute([0, 2, 3, 1, 4, 5])
        .reshape([-1, d]);
    let n = patches.size()[0] as f64;
    let second_moment = patches.tr().matmul(&patches) / n;
    let (values, vectors) = second_moment.linalg_eigh("U"); // ascending eigenvalues
    let scale = (values + eps).rsqrt();
    let filters = (vectors.tr() * scale.unsqueeze(1)).flip([0]); // rows: largest first
    let filters = filters.reshape([d, c, k, k]);
    Tensor::cat(&[&filters, &(-&filters)], 0).to_kind(Kind::Float)
}

/// Makes the first `min(C_out, C_in)` filters of a conv weight `[C_out, C_in, kh, kw]` identity
/// maps (1 at the centre tap of their own input channel), leaving the others as they are: at
/// initialisation the layer passes its input through (PyTorch's `dirac_` on `w[:C_in]`).
pub fn dirac_first_filters(weight: &mut Tensor) {
    let s = weight.size();
    let n = s[0].min(s[1]);
    tch::no_grad(|| {
        let mut head = weight.narrow(0, 0, n);
        let _ = head.zero_();
        for i in 0..n {
            let _ = head.get(i).get(i).get(s[2] / 2).get(s[3] / 2).fill_(1.0);
        }
    });
}
