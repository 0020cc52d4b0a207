"""The PyTorch reference for `convkit predict` over a folder (bench/compare-cpu.sh predict): the
same network (convkit's TorchScript export of the run, normalisation inside) classifying every
image under a folder the way a PyTorch user would: a DataLoader whose workers decode with PIL,
resize the shorter side and centre-crop (torchvision transforms), batches through the model,
softmax and top-3. Prints `predict: <images/s> ...`, decode included."""

import argparse
import json
import os
import time

import torch
from PIL import Image
from torchvision import transforms


class Files(torch.utils.data.Dataset):
    def __init__(self, root, side):
        exts = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
        self.paths = sorted(
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith(exts)
        )
        self.t = transforms.Compose(
            [transforms.Resize(side), transforms.CenterCrop(side), transforms.ToTensor()]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.t(Image.open(self.paths[i]).convert("RGB"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="convkit export --format torchscript file")
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    side = json.load(open(a.model + ".json"))["input"]["shape"][2]
    model = torch.jit.load(a.model).eval()
    files = Files(a.data, side)
    loader = torch.utils.data.DataLoader(files, batch_size=a.batch, num_workers=a.workers)
    start = time.perf_counter()
    n = 0
    with torch.no_grad():
        for x in loader:
            torch.softmax(model(x), 1).topk(3, 1)
            n += len(x)
    rate = n / (time.perf_counter() - start)
    print(f"predict: {rate:.1f} img/s ({n} images, batch {a.batch}, {a.workers} workers, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
