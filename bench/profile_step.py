"""Where a training step's time goes: torch.profiler over the stages' own `train_step` on an in-memory batch, the
model placed as the stages place it (channels_last), ops grouped by input shape, the costliest first.

Answers "is it our plumbing or the arithmetic?" once `bench/models.py` shows a stage at its raw limit: what is left is
in these kernels.

    python bench/profile_step.py [--arch resnet18] [--size 32] [--batch-size 32] [--steps 5] [--rows 8]
"""
from __future__ import annotations

import argparse
import json
import os

import torch
from torch.profiler import profile

import common  # noqa: F401  (puts the repository on sys.path)
from pipeline.compute import precision, runtime
from pipeline.train.fit import DEFAULT_OPTIMIZER, train_step
from pipeline.models.classifier import build_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = runtime.setup(args.threads, 0, args.device)
    amp = precision.choose(amp="auto", device=device, arch=args.arch, size=args.size, batch_size=args.batch_size,
                           threads=torch.get_num_threads()).train
    model = runtime.on_device(build_classifier(args.arch, "none", 10), device)
    model.unfreeze()
    optimizer = DEFAULT_OPTIMIZER.make(model, 1e-3)
    x, y = torch.randn(args.batch_size, 3, args.size, args.size), torch.randint(0, 10, (args.batch_size,))
    for _ in range(2):  # warm-up: oneDNN / cuDNN pick and build their kernels
        train_step(model, optimizer, x, y, device, amp)
    with profile(record_shapes=True) as profiler:
        for _ in range(args.steps):
            train_step(model, optimizer, x, y, device, amp)
    events = sorted(profiler.key_averages(group_by_input_shape=True), key=lambda e: e.self_cpu_time_total,
                    reverse=True)
    total = sum(event.self_cpu_time_total for event in events)
    rows = [{"op": event.key, "input_shapes": str(event.input_shapes)[:90], "calls_per_step": event.count // args.steps,
             "ms_per_step": round(event.self_cpu_time_total / 1e3 / args.steps, 1),
             "share": round(event.self_cpu_time_total / total, 3)} for event in events[: args.rows]]
    print(json.dumps({"benchmark": "profile_step", "arch": args.arch, "size": args.size, "batch_size": args.batch_size,
                      "device": str(device), "amp": amp, "ms_per_step": round(total / 1e3 / args.steps, 1),
                      "top": rows}))
    for row in rows:
        print(f"{row['share']:6.1%} {row['ms_per_step']:8.1f} ms/step  {row['op']:<28} {row['input_shapes']}")


if __name__ == "__main__":
    main()
