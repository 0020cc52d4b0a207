#!/usr/bin/env python3
"""PyTorch reference for `convkit bench`: the identical Net8 network and training step
(forward, cross-entropy, backward, SGD momentum 0.9 with weight decay 5e-4 on >1-D parameters),
in channels-last memory as convkit trains (--nchw for NCHW),
timed the same way (warm-up steps, then timed steps on random input).

Prints `train: X img/s` and `infer: Y img/s`, as `convkit bench` does."""
import argparse
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


def features(a):
    """Pooled body features of a torchvision-layout ResNet (the parity fixture's modules)."""
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
