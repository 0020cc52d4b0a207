#!/usr/bin/env python3
"""PyTorch reference for `convkit bench`: the identical Net8 network and training step
(forward, cross-entropy, backward, SGD momentum 0.9 with weight decay 5e-4 on >1-D parameters),
in channels-last memory as convkit trains (--nchw for NCHW),
timed the same way (warm-up steps, then timed steps on random input).

Prints `train: X img/s` and `infer: Y img/s`, as `convkit bench` does."""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBn(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x, relu=True):
        y = self.bn(self.conv(x))
        return F.relu(y) if relu else y


class Net8(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = ConvBn(3, 32)
        self.stages = nn.ModuleList()
        for cin, cout in [(32, 64), (64, 128), (128, 256)]:
            self.stages.append(nn.ModuleList([ConvBn(cin, cout, 2), ConvBn(cout, cout), ConvBn(cout, cout)]))
        self.fc = nn.Linear(256, classes)

    def forward(self, x):
        x = self.stem(x)
        for down, r1, r2 in self.stages:
            x = down(x)
            x = F.relu(r2(r1(x), relu=False) + x)
        return self.fc(x.mean((2, 3)))


def timed(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - t


def supcon_loss(features, labels, temperature=0.1):
    """The reference formula (HobbitLong/SupContrast losses.py, contrast mode 'all')."""
    bsz, n_views = features.shape[:2]
    labels = labels.view(-1, 1)
    mask = torch.eq(labels, labels.T).float()
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True)[0].detach()
    mask = mask.repeat(n_views, n_views)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(bsz * n_views).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1).clamp(min=1)
    return -mean_log_prob_pos.mean()


def supcon(a):
    x = F.normalize(torch.randn(1024, 2, 128), dim=-1).requires_grad_(True)
    labels = torch.randint(10, (1024,))

    def step():
        supcon_loss(x, labels).backward()

    rate = a.steps / timed(step, a.warmup, a.steps)
    print(f"supcon: {rate:.2f} loss+grad/s ({1000 / rate:.2f} ms each; 2x1024 128-d features, t = 0.1)")


class CifarBlock(nn.Module):
    """He et al. 2016 (4.2) basic block with the option-A shortcut, as convkit's resnet20."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.extra = cout - cin

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        s = x
        if self.extra:
            half = self.extra // 2
            s = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))
        return F.relu(y + s)


class CifarResNet(nn.Module):
    def __init__(self, depth=20):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for i, width in enumerate([16, 32, 64]):
            for b in range(n):
                blocks.append(CifarBlock(cin, width, 2 if b == 0 and i > 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(F.relu(self.bn1(self.conv1(x)))).mean((2, 3))


def resized_crop_box(h, w, rng, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    return 0, 0, h, w


YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def contrastive_view(images, rng, mean, std):
    """The SupCon/SimCLR policy on a u8 NHWC batch, batched the way convkit does it: flip,
    random-resized crop (scale 0.2-1) by one grid_sample, colour jitter 0.4/0.4/0.4/0.1 with
    p = 0.8 (hue as a YIQ rotation), grayscale p = 0.2, normalisation."""
    b, h, w, _ = images.shape
    flip = torch.tensor([rng.random() < 0.5 for _ in range(b)])
    x = images.permute(0, 3, 1, 2).float() / 255.0
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    theta = []
    for _ in range(b):
        top, left, ch, cw = resized_crop_box(h, w, rng)
        theta.append([[cw / w, 0, (2 * left + cw) / w - 1], [0, ch / h, (2 * top + ch) / h - 1]])
    grid = F.affine_grid(torch.tensor(theta), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    on = [rng.random() < 0.8 for _ in range(b)]
    f = lambda amount: torch.tensor([rng.uniform(1 - amount, 1 + amount) if o else 1.0 for o in on]).view(-1, 1, 1, 1)
    bright, contrast, sat = f(0.4), f(0.4), f(0.4)
    hue = [rng.uniform(-0.1, 0.1) if o else 0.0 for o in on]
    gray = lambda t: (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x * bright).clamp(0, 1)
    x = (contrast * x + (1 - contrast) * gray(x).mean((1, 2, 3), keepdim=True)).clamp(0, 1)
    x = (sat * x + (1 - sat) * gray(x)).clamp(0, 1)
    inv = torch.linalg.inv(YIQ)
    rots = []
    for t in hue:
        c, s_ = math.cos(2 * math.pi * t), math.sin(2 * math.pi * t)
        rots.append(inv @ torch.tensor([[1, 0, 0], [0, c, -s_], [0, s_, c]]) @ YIQ)
    x = torch.einsum("bij,bjhw->bihw", torch.stack(rots), x).clamp(0, 1)
    g = torch.tensor([rng.random() < 0.2 for _ in range(b)]).view(-1, 1, 1, 1)
    x = torch.where(g, gray(x).expand_as(x), x)
    return (x - mean) / std


def pretrain(a):
    """The `convkit supcon` step of the cifar10-supcon recipe: two views, ResNet-20, projection
    head 64-64-128, SupCon loss (t = 0.1), SGD momentum 0.9, weight decay 1e-4 on >1-D weights."""
    import random
    encoder = CifarResNet(20).to(memory_format=torch.channels_last)
    head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 128))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.SGD([{"params": [p for p in params if p.dim() > 1], "weight_decay": 1e-4},
                           {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9)
    images = torch.randint(0, 256, (a.batch, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(10, (a.batch,))
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    rng = random.Random(0)

    def step():
        views = torch.cat([contrastive_view(images, rng, mean, std) for _ in range(2)])
        z = F.normalize(head(encoder(views.contiguous(memory_format=torch.channels_last))), dim=1)
        loss = supcon_loss(torch.stack(z.chunk(2), dim=1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    rate = a.batch * a.steps / timed(step, a.warmup, a.steps)
    print(f"pretrain: {rate:.1f} img/s (resnet20, batch {a.batch} x 2 views, {torch.get_num_threads()} threads)")


def torchvision_body(name):
    """torchvision's own model with its last linear layer replaced by the identity: what
    convkit's `Network::features` computes (everything the replaceable head reads)."""
    import torchvision
    model = getattr(torchvision.models, name)()
    if hasattr(model, "fc"):
        model.fc = torch.nn.Identity()
    else:
        model.classifier[-1] = torch.nn.Identity()
    return model


def features(a):
    """Pooled body features: torchvision's model for the zoo's names, else a torchvision-layout
    ResNet (the parity fixture's modules)."""
    if a.model not in ("resnet18", "resnet50"):
        model = torchvision_body(a.model).eval()
        fmt = torch.contiguous_format if a.nchw else torch.channels_last
        model = model.to(memory_format=fmt)
        x = torch.randn(a.infer_batch, 3, a.size, a.size).contiguous(memory_format=fmt)

        def forward():
            with torch.no_grad():
                model(x)

        rate = a.infer_batch * a.steps / timed(forward, a.warmup, a.steps)
        print(f"features: {rate:.1f} img/s ({a.model} at {a.size}x{a.size}, batch {a.infer_batch}, {torch.get_num_threads()} threads)")
        return
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    from make_resnet import Basic, Bottleneck, ResNet
    layout = {"resnet18": (Basic, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}
    model = ResNet(*layout[a.model]).eval()
    fmt = torch.contiguous_format if a.nchw else torch.channels_last
    model = model.to(memory_format=fmt)
    x = torch.randn(a.infer_batch, 3, a.size, a.size).contiguous(memory_format=fmt)

    def body():
        with torch.no_grad():
            y = model.maxpool(torch.relu(model.bn1(model.conv1(x))))
            for i in range(4):
                y = getattr(model, f"layer{i + 1}")(y)
            y.mean((2, 3))

    rate = a.infer_batch * a.steps / timed(body, a.warmup, a.steps)
    print(f"features: {rate:.1f} img/s ({a.model} at {a.size}x{a.size}, batch {a.infer_batch}, {torch.get_num_threads()} threads)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--nchw", action="store_true", help="keep NCHW memory (convkit bench --nchw)")
    ap.add_argument("--supcon", action="store_true", help="time the SupCon loss (convkit bench --supcon)")
    ap.add_argument("--features", action="store_true", help="time ResNet feature extraction (convkit bench --features)")
    ap.add_argument("--pretrain", action="store_true", help="time SupCon pre-training steps (convkit bench --pretrain)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=112)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.supcon:
        return supcon(a)
    if a.features:
        return features(a)
    if a.pretrain:
        return pretrain(a)
    model = Net8()
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.01, momentum=0.9)
    x = torch.randn(a.batch, 3, 32, 32)
    y = torch.randint(10, (a.batch,))
    fmt = torch.contiguous_format if a.nchw else torch.channels_last
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    train = a.batch * a.steps / timed(step, a.warmup, a.steps)
    model.eval()
    xi = torch.randn(a.infer_batch, 3, 32, 32).contiguous(memory_format=fmt)

    def infer():
        with torch.no_grad():
            model(xi)

    infer_rate = a.infer_batch * a.steps / timed(infer, a.warmup, a.steps)
    print(f"model net8 on pytorch {torch.__version__} ({torch.get_num_threads()} threads), batch {a.batch}")
    print(f"train: {train:.1f} img/s")
    print(f"infer: {infer_rate:.1f} img/s")


if __name__ == "__main__":
    main()
