#!/usr/bin/env python3
"""Compare two folders written by bench/refactor_check.sh: every number in every run's
metrics.jsonl and summary.json, bit for bit, except timings. Key renames of issue 14
(test_accuracy -> knn_accuracy for contrastive runs; unmeasured zeros -> null) are mapped.
Usage: refactor_compare.py BEFORE AFTER"""
import json, os, sys

TIMING = ("seconds", "images_per_s", "time", "elapsed", "rate")

def numbers(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not any(t in k for t in TIMING):
                yield from numbers(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{prefix}{i}.")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield prefix.rstrip("."), obj

def load(folder):
    out = {}
    for run in sorted(os.listdir(folder)):
        for f in ("metrics.jsonl", "summary.json"):
            p = os.path.join(folder, run, f)
            if not os.path.exists(p):
                continue
            lines = open(p).read().splitlines() if f.endswith("l") else [open(p).read()]
            for i, line in enumerate(lines):
                for k, v in numbers(json.loads(line)):
                    out[f"{run}/{f}[{i}]/{k}"] = v
    return out

before, after = load(sys.argv[1]), load(sys.argv[2])
same = diff = unmeasured = 0
for k, v in sorted(before.items()):
    w = after.get(k, after.get(k.replace("test_accuracy", "knn_accuracy")))
    if w == v:
        same += 1
    elif w is None and v == 0.0 and k.startswith("supcon/metrics"):
        unmeasured += 1  # a placeholder zero for something not measured, now null
    else:
        diff += 1
        print(f"DIFF {k}: {v} -> {w}")
for k in sorted(set(after) - set(before)):
    if k.replace("knn_accuracy", "test_accuracy") not in before:
        print(f"NEW  {k}: {after[k]}")
print(f"{same} numbers equal, {diff} differ, {unmeasured} placeholder zeros now null")
sys.exit(1 if diff else 0)
