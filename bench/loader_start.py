"""What loader workers cost to start: a stage's first epoch and the ones after it, with workers forked from the fork
server (pipeline.train.loaders.worker_context, what the stages use) against workers forked from the process itself
(the old way, which can hang on Python 3.11), each in a fresh process, alternated.

    python bench/loader_start.py [--repeat 3] [--workers 2]

Each process builds a loader over 200 small in-memory tensors and times three epochs of it, so the figures are the
workers' start and nothing else.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import common  # noqa: F401  (puts the repository on sys.path)

EPOCHS = 3


def epochs(mode: str, workers: int) -> list[float]:
    """Seconds per epoch of a loader with `workers` processes forked the `mode` way, in this process."""
    import torch
    from pipeline.train import loaders

    data = torch.utils.data.TensorDataset(torch.randn(200, 3, 8, 8), torch.zeros(200))
    if mode == "server":
        loader = loaders.make_loader(data, 16, False, workers, 0, torch.device("cpu"))
    else:
        loader = torch.utils.data.DataLoader(data, batch_size=16, num_workers=workers,
                                             multiprocessing_context="fork")
    seconds = []
    for _ in range(EPOCHS):
        start = time.perf_counter()
        for _ in loader:
            pass
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", choices=("server", "fork"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(" ".join(f"{s:.3f}" for s in epochs(args.child, args.workers)))
        return
    results = {"fork": [], "server": []}
    for _ in range(args.repeat):
        for mode in results:
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--workers", str(args.workers)],
                                 capture_output=True, text=True, check=True).stdout.split()
            results[mode].append([float(s) for s in out])
    print(f"| workers forked from | first epoch (median of {args.repeat}) | later epochs (median) |")
    print("| --- | --- | --- |")
    for mode, runs in results.items():
        later = statistics.median(s for run in runs for s in run[1:])
        print(f"| {'the fork server' if mode == 'server' else 'the stage'} | "
              f"{statistics.median(run[0] for run in runs):.2f} s | {later:.3f} s |")


if __name__ == "__main__":
    main()
