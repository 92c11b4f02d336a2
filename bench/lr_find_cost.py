"""What lr_find costs against the training it serves: its steps, and the time of each step against a training step of
the same model, batches and precision, alternated in one process.

    python bench/lr_find_cost.py [--run outputs/demo] [--size 72] [--repeat 3]

It reads a finished run: the lr_find job's params (the header of logs/lr_find_1_<size>.log), the checkpoint that
size starts from (head/model.pt for the first size), the split and the resize cache. The batches are loaded once
into memory, so both sides time the model alone; loading is timed apart, as each step pays it in the stage (the
training loader has no prefetch thread: see pipeline/train/loaders.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
from pipeline.compute import runtime
from pipeline.data.dataset import read_split
from pipeline.models.classifier import restore_model
from pipeline.train import fit
from pipeline.train.fit import OptimizerSpec
from pipeline.train.loaders import image_loaders


def stage_params(log: Path) -> dict:
    """The params the lr_find job ran with, from its log's first line (`[lr_find] <date> params={...}`)."""
    return json.loads(log.read_text().splitlines()[0].split("params=", 1)[1])


def fresh_model(run: Path, params: dict, classes: list[str], device):
    model, _ = restore_model(run / "head" / "model.pt", params["arch"], classes)
    model = runtime.on_device(model, device)
    model.train_as_size(params)
    return model


def timed_steps(step, batches) -> list[float]:
    seconds = []
    for x, y in batches:
        started = time.perf_counter()
        step(x, y)
        seconds.append(time.perf_counter() - started)
    return seconds


def training_steps(run: Path, params: dict, classes, batches, device, amp: bool) -> list[float]:
    """A training step at the fit's lr, as the fine-tune size's first epoch runs it."""
    model = fresh_model(run, params, classes, device)
    optimizer = OptimizerSpec.from_params(params).make(model, params["lr"])
    model.train()
    return timed_steps(lambda x, y: fit.train_step(model=model, optimizer=optimizer, x=x, y=y, device=device,
                                                   amp=amp), batches)


def lr_find_steps(run: Path, params: dict, classes, batches, device, amp: bool) -> list[float]:
    """lr_find's own loop, each of its train_step calls timed (it ends once the loss diverges)."""
    model, seconds, step = fresh_model(run, params, classes, device), [], fit.train_step

    def timed_step(**arguments):
        started = time.perf_counter()
        loss = step(**arguments)
        seconds.append(time.perf_counter() - started)
        return loss

    fit.train_step = timed_step
    try:
        fit.lr_find(model=model, train_batches=batches, device=device, amp=amp, lr=params["lr"],
                    optimizer_spec=OptimizerSpec.from_params(params))
    finally:
        fit.train_step = step
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--size", type=int, default=72)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    params = stage_params(args.run / "logs" / f"lr_find_1_{args.size}.log")
    device = runtime.setup(2, params["seed"], "cpu")
    train, valid, classes = read_split(args.run / "split.csv")
    started = time.perf_counter()
    loader, _ = image_loaders(train=train, valid=valid, cache_dir=args.run / "resized" / str(
        next(p.name for p in (args.run / "resized").iterdir())), params=params, device=device)
    batches = list(loader)
    loading = (time.perf_counter() - started) / len(batches)
    for amp in (False, True):
        train_s, find_s = [], []
        for _ in range(args.repeat):  # alternated, so a busy spell slows both alike
            train_s += training_steps(args.run, params, classes, batches, device, amp)
            find_s += lr_find_steps(args.run, params, classes, batches, device, amp)
        steps = len(find_s) // args.repeat
        print(json.dumps({"benchmark": "lr_find_cost", "precision": "bf16" if amp else "fp32", "size": args.size,
                          "batches_per_epoch": len(batches), "lr_find_steps": steps,
                          "train_step_s": round(statistics.median(train_s), 3),
                          "lr_find_step_s": round(statistics.median(find_s), 3),
                          "ratio": round(statistics.median(find_s) / statistics.median(train_s), 3),
                          "loading_per_batch_s": round(loading, 3), "machine": common.machine()}))


if __name__ == "__main__":
    main()
