"""Benchmark: one step of each dnncourse.optim optimizer against torch.optim's own.

PyTorch's reference is the per-parameter loop (``foreach=False``), the one our code
mirrors; its multi-tensor and fused paths are faster and are not the comparison. The
model is an MLP with a few million parameters; both optimizers get the same gradients.
Timings are interleaved (ours, torch, ours, torch, ...) so that drifts in machine load
hit both, and the script prints the ratio of the medians (goal: at most 1.3).

Usage:
    python benchmarks/bench_optim.py [--repeats 50] [--width 1024] [--device cpu|cuda]
        [--threads N] [--only NAME]
"""

import argparse
import statistics
import time

import torch
from torch import nn

import dnncourse.optim
from dnncourse import default_device

SETTINGS = [
    ("SGD", {"lr": 1e-4}),
    ("SGD", {"lr": 1e-4, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}),
    ("Adagrad", {"lr": 1e-4}),
    ("Adagrad", {"lr": 1e-4, "lr_decay": 1e-3, "weight_decay": 1e-4}),
    ("RMSprop", {"lr": 1e-4}),
    ("RMSprop", {"lr": 1e-4, "momentum": 0.9, "centered": True, "weight_decay": 1e-4}),
    ("Adam", {"lr": 1e-4}),
    ("Adam", {"lr": 1e-4, "amsgrad": True, "weight_decay": 1e-4}),
    ("AdamW", {"lr": 1e-4}),
    ("AdamW", {"lr": 1e-4, "amsgrad": True}),
]


def make_params(width, device, seed=0):
    """Parameters (with gradients) of a 784-width-width-width-10 MLP."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(784, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 10),
    ).to(device)  # fmt: skip
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return list(model.parameters())


def time_step(optimizer, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--only", default=None, help="run only this optimizer (e.g. Adam)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    params = make_params(args.width, device)
    num_params = sum(p.numel() for p in params)
    print(f"device {device}, {num_params / 1e6:.2f}M parameters in {len(params)} tensors, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats")  # fmt: skip
    print(f"{'optimizer':<72} {'ours ms':>8} {'torch ms':>9} {'ratio':>6}")
    ratios = []
    for name, kwargs in SETTINGS:
        if args.only is not None and name != args.only:
            continue
        ours = getattr(dnncourse.optim, name)(make_params(args.width, device), **kwargs)
        theirs = getattr(torch.optim, name)(
            make_params(args.width, device), **kwargs, foreach=False
        )
        times = {"ours": [], "torch": []}
        for r in range(args.warmup + args.repeats):
            # alternate which one goes first, so neither always follows the other
            order = [("ours", ours), ("torch", theirs)]
            for label, optimizer in order if r % 2 == 0 else order[::-1]:
                elapsed = time_step(optimizer, device)
                if r >= args.warmup:
                    times[label].append(elapsed)
        ours_ms = 1e3 * statistics.median(times["ours"])
        torch_ms = 1e3 * statistics.median(times["torch"])
        ratios.append(ours_ms / torch_ms)
        label = f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        print(f"{label:<72} {ours_ms:8.2f} {torch_ms:9.2f} {ours_ms / torch_ms:6.2f}")
    print(f"worst ratio {max(ratios):.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
