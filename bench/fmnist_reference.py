"""PyTorch reference for convkit's default recipe on Fashion-MNIST with the plain `cnn`:
conv3x3-BN-ReLU-maxpool2 at widths 32/64/128, global average pool, linear head; SGD lr 0.1,
momentum 0.9, Nesterov, weight decay 5e-4 on conv/linear weights only (convkit decays no
BatchNorm parameter or bias), cosine per step to 0, batch 128 without the short last batch,
the data's own mean/std, and the augmentation convkit picks from the data (`--augment`:
`crop2-flip` = 2-pixel zero-padded translation + horizontal flip, the default for
Fashion-MNIST; `crop4-flip` = the CIFAR policy convkit used for every data set before).
PyTorch's default initialisation (convkit's cnn uses torchvision's; noted beside the numbers).

    .venv/bin/python bench/fmnist_reference.py /usr/share/datasets/fashion-mnist --epochs 3
"""
import argparse
import gzip
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    raw = gzip.open(path).read() if str(path).endswith(".gz") else open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(root, stem):
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise SystemExit(f"{root}: missing {stem}[.gz]")


class Cnn(nn.Module):
    def __init__(self, cin=1, widths=(32, 64, 128), classes=10):
        super().__init__()
        layers = []
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def augment(x, pad, flip, gen):
    n, _, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
        x = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        x = x.gather(3, cols)
    if flip:
        m = torch.rand(n, generator=gen) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--augment", choices=["crop2-flip", "crop2", "crop4-flip"], default="crop2-flip")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    xtr = torch.from_numpy(read_idx(find(a.root, "train-images-idx3-ubyte")).copy()).float().div(255)[:, None]
    ytr = torch.from_numpy(read_idx(find(a.root, "train-labels-idx1-ubyte")).astype(np.int64))
    xte = torch.from_numpy(read_idx(find(a.root, "t10k-images-idx3-ubyte")).copy()).float().div(255)[:, None]
    yte = torch.from_numpy(read_idx(find(a.root, "t10k-labels-idx1-ubyte")).astype(np.int64))
    mean, std = xtr.mean().item(), xtr.std().item()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    pad = {"crop2-flip": 2, "crop2": 2, "crop4-flip": 4}[a.augment]
    flip = a.augment.endswith("flip")
    model = Cnn().to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
        lr=0.1, momentum=0.9, nesterov=True,
    )
    steps = len(xtr) // a.batch
    total = steps * a.epochs
    start = time.time()
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(steps):
            t = epoch * steps + i
            for g in opt.param_groups:
                g["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * t / total))
            idx = order[i * a.batch : (i + 1) * a.batch]
            x = augment(xtr[idx], pad, flip, gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xte[j : j + 500]).argmax(1) for j in range(0, len(xte), 500)])
        acc = (pred == yte).float().mean().item()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f} test {100 * acc:.2f}% ({time.time() - start:.1f} s)", flush=True)
    print(f"reference: augment={a.augment} epochs={a.epochs} test_accuracy={100 * acc:.2f}% seconds={time.time() - start:.1f}")


if __name__ == "__main__":
    main()
