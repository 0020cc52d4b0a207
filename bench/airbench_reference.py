#!/usr/bin/env python3
"""PyTorch reference for convkit's airbench recipes (recipes/cifar10-airbench.toml and
cifar10-airbench-cpu.toml): airbench94 (Jordan 2024) written out in eager PyTorch as published:
frozen 2x2 patch-whitening conv (bias trained 3 epochs), three conv groups, Dirac init,
BatchNorm with frozen scale (momentum 0.6, eps 1e-12), label smoothing 0.2, summed loss,
Nesterov SGD 0.85 with airbench's decoupled lr 11.5 / wd 0.0153 "per 1024 examples" and 64x
BatchNorm-bias rate, lr 0.2x -> 1x over 23% of the steps then -> 0.07x, alternating flip,
+-2 px reflect translation, lookahead/EMA every 5 steps, TTA (mirror + 1 px translations).

Reads the same data as convkit: an image folder with train/<class>/*.jpg and test/<class>/*.jpg
(classes and files in sorted order), decoded once with PIL and cached as .npz.

Timing as airbench and `convkit bench --recipe`: whitening init + training epochs + the final TTA
evaluation, with device synchronisation; per-epoch evaluations (--eval-every, for the time to a
target accuracy) are not timed. On CUDA the net runs as airbench does (fp16, BatchNorm fp32,
channels-last); on the CPU in fp32, channels-last.

Prints `run i: acc=.. seconds=.. time_to_80=..` per run, then
`reference: acc=<mean> sd=<sd> seconds=<mean> runs=<N>` and `time_to_80: <median seconds>`."""
import argparse
import hashlib
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def load_split(root, split):
    from PIL import Image

    base = os.path.join(root, split)
    classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    images, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(base, c))):
            with Image.open(os.path.join(base, c, f)) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(i)
    return np.stack(images), np.array(labels, dtype=np.int64)


def load_data(root):
    """(train images, train labels, test images, test labels) as uint8 NHWC / int64 arrays."""
    key = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
    cache = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"convkit-airbench-ref-{key}.npz")
    if os.path.exists(cache):
        d = np.load(cache)
        return d["xtr"], d["ytr"], d["xte"], d["yte"]
    t = time.perf_counter()
    xtr, ytr = load_split(root, "train")
    xte, yte = load_split(root, "test")
    print(f"decoded {len(xtr)} + {len(xte)} images in {time.perf_counter() - t:.1f} s")
    np.savez(cache + ".tmp.npz", xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    os.replace(cache + ".tmp.npz", cache)
    return xtr, ytr, xte, yte


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum=0.6, eps=1e-12):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class ConvGroup(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding="same", bias=False)
        self.norm2 = BatchNorm(cout)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def make_net(widths, device, half):
    net = nn.Sequential(
        nn.Conv2d(3, 24, 2, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(24, widths[0]),
        ConvGroup(widths[0], widths[1]),
        ConvGroup(widths[1], widths[2]),
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(widths[2], 10, bias=False),
        Mul(1 / 9),
    )
    net[0].weight.requires_grad = False
    net = net.to(device).to(memory_format=torch.channels_last)
    for m in net.modules():
        # airbench's order: containers go to half first, then each BatchNorm back to float.
        if half:
            m.float() if isinstance(m, BatchNorm) else m.half()
        if isinstance(m, nn.Conv2d) and m is not net[0]:
            w = m.weight.data
            nn.init.dirac_(w[: w.size(1)])
    return net


def init_whitening(layer, images, eps=5e-4):
    c, (h, w) = images.shape[1], layer.weight.shape[2:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    flat = patches.reshape(len(patches), -1)
    cov = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov, UPLO="U")
    eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
    eigenvectors = eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((scaled, -scaled)).to(layer.weight.dtype)


class Lookahead:
    def __init__(self, net):
        self.ema = {k: v.clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net, decay):
        for ema, p in zip(self.ema.values(), net.state_dict().values()):
            if p.dtype in (torch.half, torch.float):
                ema.lerp_(p, 1 - decay)
                p.copy_(ema)


def batch_crop(padded, size):
    """airbench's translation: each image shifted by (-r..r, -r..r) from a reflect-padded batch."""
    r = (padded.size(-1) - size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(padded), 2), device=padded.device)
    out = torch.empty((len(padded), padded.size(1), size, size), device=padded.device, dtype=padded.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[mask] = padded[mask, :, r + sy : r + sy + size, r + sx : r + sx + size]
    return out


class Data:
    def __init__(self, arrays, device, dtype):
        xtr, ytr, xte, yte = arrays
        self.device, self.dtype = device, dtype
        # Per-channel statistics of the training images, as convkit computes them.
        pixels = torch.from_numpy(xtr).reshape(-1, 3).double() / 255
        self.mean = pixels.mean(0).float().view(1, 3, 1, 1).to(device)
        self.std = pixels.std(0).float().view(1, 3, 1, 1).to(device)
        self.train_u8 = torch.from_numpy(xtr).to(device)
        self.train_labels = torch.from_numpy(ytr).to(device)
        self.test = self.normalise(torch.from_numpy(xte).to(device))
        self.test_labels = torch.from_numpy(yte).to(device)
        # The whitening sample: 5,000 training images in a fixed random order (the folder is
        # read class by class; airbench's first 5,000 of CIFAR's own order are mixed classes).
        order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))
        self.whitening_sample = order[:5000].to(device)

    def normalise(self, u8):
        x = (u8.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std
        return x.to(self.dtype).contiguous(memory_format=torch.channels_last)

    def train_batch(self, idx, flip):
        x = self.normalise(self.train_u8[idx])
        x = batch_crop(F.pad(x, (2,) * 4, mode="reflect"), x.size(-1))
        x = torch.where(flip[idx].view(-1, 1, 1, 1), x.flip(-1), x)
        return x.contiguous(memory_format=torch.channels_last), self.train_labels[idx]


@torch.no_grad()
def evaluate(net, data, batch=2000):
    net.eval()

    def mirror(x):
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))

    correct = 0
    for i in range(0, len(data.test), batch):
        x = data.test[i : i + batch]
        padded = F.pad(x, (1,) * 4, mode="reflect")
        shifted = [padded[:, :, 0:-2, 0:-2], padded[:, :, 2:, 2:]]
        logits = 0.5 * mirror(x) + 0.5 * torch.stack([mirror(s) for s in shifted]).mean(0)
        correct += (logits.argmax(1) == data.test_labels[i : i + batch]).sum().item()
    net.train()
    return correct / len(data.test)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_once(a, data, seed):
    torch.manual_seed(seed)
    device, half = data.device, data.dtype == torch.half
    momentum, batch = 0.85, a.batch
    net = make_net(a.widths, device, half)
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = 11.5 / kilostep_scale
    wd = 0.0153 * batch / kilostep_scale
    lr_biases = lr * 64.0
    named = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    norm_biases = [p for k, p in named if "norm" in k]
    others = [p for k, p in named if "norm" not in k]
    opt = torch.optim.SGD(
        [
            dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
            dict(params=others, lr=lr, weight_decay=wd / lr),
        ],
        momentum=momentum,
        nesterov=True,
    )
    n = len(data.train_u8)
    steps_per_epoch = n // batch
    total = steps_per_epoch * a.epochs
    warmup = int(total * 0.23)

    def factor(step):
        if step < warmup:
            f = step / warmup
            return 0.2 * (1 - f) + f
        f = (step - warmup) / (total - warmup)
        return (1 - f) + 0.07 * f

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    alpha = 0.95**5 * (torch.arange(total + 1) / total) ** 3
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum")

    sync(device)
    t0 = time.perf_counter()
    init_whitening(net[0], data.normalise(data.train_u8[data.whitening_sample]))
    lookahead = Lookahead(net)
    first_flip = torch.rand(n, device=device) < 0.5
    sync(device)
    seconds, step, to_target = time.perf_counter() - t0, 0, None
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        net[0].bias.requires_grad = epoch < 3
        flip = first_flip ^ (epoch % 2 == 1)
        order = torch.randperm(n, device=device)
        for i in range(steps_per_epoch):
            x, y = data.train_batch(order[i * batch : (i + 1) * batch], flip)
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 5 == 0:
                lookahead.update(net, decay=alpha[step].item())
        if epoch + 1 == a.epochs:
            lookahead.update(net, decay=1.0)
        sync(device)
        seconds += time.perf_counter() - t0
        if a.eval_every and (epoch + 1) % a.eval_every == 0 and epoch + 1 < a.epochs:
            acc = evaluate(net, data)
            print(f"  epoch {epoch + 1}: test {acc:.4f} training seconds {seconds:.2f}", flush=True)
            if to_target is None and acc >= a.target:
                to_target = seconds
    t0 = time.perf_counter()
    acc = evaluate(net, data)
    sync(device)
    train_seconds = seconds
    seconds += time.perf_counter() - t0
    if a.eval_every:
        print(f"  epoch {a.epochs}: test {acc:.4f} training seconds {train_seconds:.2f}", flush=True)
    if to_target is None and acc >= a.target:
        to_target = train_seconds
    return acc, seconds, to_target


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="image folder with train/ and test/")
    ap.add_argument("--widths", default="64,256,256")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--warmup-runs", type=int, default=0, help="untimed runs first (cuDNN autotuning)")
    ap.add_argument("--eval-every", type=int, default=0, help="test after every N epochs (untimed)")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    a.widths = [int(w) for w in a.widths.split(",")]
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}")
    dtype = torch.half if device.type == "cuda" else torch.float
    data = Data(load_data(a.data), device, dtype)
    for r in range(a.warmup_runs):
        train_once(a, data, 1000 + r)
    accs, secs, targets = [], [], []
    for r in range(a.runs):
        acc, s, t = train_once(a, data, r)
        accs.append(acc)
        secs.append(s)
        shown = "not reached" if t is None else f"{t:.2f}"
        print(f"run {r}: acc={acc:.4f} seconds={s:.3f} time_to_{round(100 * a.target)}={shown}", flush=True)
        if t is not None:
            targets.append(t)
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"reference: acc={statistics.mean(accs):.4f} sd={sd:.4f} seconds={statistics.mean(secs):.3f} runs={a.runs}")
    if targets:
        print(f"time_to_{round(100 * a.target)}: {statistics.median(targets):.2f}")


if __name__ == "__main__":
    main()
