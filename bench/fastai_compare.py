"""Same work, ours vs fastai v2: the whole workflow (`snakemake`, every stage a process) against a fastai v2 script,
each timed wall-clock end to end as a subprocess, each scored on the hidden test labels. Target: ours <= 0.70x.

    python bench/fastai_compare.py [--n 1200 --n-test 400] [--fastai-path /tmp/fastai-site] [--work DIR] [--pretrained]

With --pretrained, both start from the same ImageNet weights: timm's tf_efficientnet_lite0 with the packaged
EfficientNet-Lite0 tensors (converted once by this project's `pipeline.models.backbones`, handed to fastai as a timm state
dict), normalised as timm's pretrained config says (mean = std = 0.5); fastai's `vision_learner` builds its own timm
body and head on that arch, and `fine_tune`'s frozen epoch then unfrozen epochs are the same calls as below. Ours
then also trains as fastai does: `train: {optimizer: adamw, weight_decay: 0.01, train_bn: true}` and fastai's lrs
(2e-3 frozen, slice(8e-4, 2e-3) unfrozen).

The work, on a demo-built Dog Breed-layout data set (real JPEGs, mostly 150-600 px, 3 % over 1000 px; reused when
present): resnet18 from scratch, batch 32, one frozen epoch of the head at the first size, then 3 unfrozen epochs at
each size (64, 96), TTA with 4 augmented passes on the test images; no flips (digits). Both validate on the same
images: the workflow's split (fastai 0.7's get_cv_idxs), handed to fastai as its `is_valid` column.

Ours -> fastai (bench/fastai_same_work.py):
  head: precompute + precomputed fit (1 epoch on cached activations) + augmented fit(1e-2, 1, cycle_len=1)
        -> vision_learner(dls, resnet18, pretrained=False) (frozen); fit_one_cycle(1)
        The precompute stage (one un-augmented forward pass over train, valid and test at the first size) and the
        one fit on its activations are extra work of ours: the schema needs at least one precomputed fit. Counted.
  finetune size s: unfreeze, fit(lrs, 1, cycle_len=3) -> unfreeze(); fit_one_cycle(3, slice(...)) (new dls per size)
        One SGDR cycle over 3 epochs is the closest to one one-cycle over 3 epochs (both anneal the lr once by
        cosine; fastai warms up over 30 % and uses Adam, ours 0.7's SGD with momentum and a 1/20 warm-up at lr/100).
  tta: n_aug 4, equal mean of the plain + 4 augmented passes -> learn.tta(dl=test_dl, n=4) (fastai mixes the
        plain pass in at beta=0.25; its equal mean is reported too)
  augmentation basic, max_zoom 1.1 -> aug_transforms(do_flip=False) (+ fastai's warp 0.2 and lighting 0.2 vs 0.05)
  images.shorter_side 112 (1.1 x 96, rounded up to 8): our resize cache is part of our method; fastai decodes and
        resizes the full JPEG on every read.
  Not the same: ours also runs image_stats (one decoding pass, bad-image check), calibrate (disabled: a pass-through)
        and submission (the CSV); each stage is a fresh process (imports, model build). Ours uses num_workers 0 (the
        demo's setting for 2 cores), fastai its default min(16, cpus) workers. Frozen BatchNorm: ours keeps it in eval
        mode, fastai trains it (train_bn). Both normalise with ImageNet statistics.

fastai goes next to this project's torch without touching .venv; --no-deps keeps pip from pulling a second torch or
fastai's text dependencies (spacy); fastprogress 1.0.3, as 1.1 imports python-fasthtml:
    .venv/bin/pip install --target /tmp/fastai-site --no-deps "fastai==2.8.*" "fastcore>=2.2.22" fasttransform \
        "fastprogress==1.0.3" fastdownload "plum-dispatch<2.10" beartype rich cloudpickle
then pass --fastai-path /tmp/fastai-site (or --fastai-python for another interpreter that has fastai and torch).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from common import machine, report
from demo_scores import hidden_test
from pipeline.predict import passes
from pipeline.recipe import defaults as recipe_defaults
from pipeline.data.dataset import read_labeled, read_labeled_table, read_test_table
from pipeline.stages import demo_data
from pipeline.stages.split import RECIPE_KEYS, make_split

REPO = Path(__file__).resolve().parents[1]
N_AUG, EPOCHS = 4, 3
INSTALL = ('.venv/bin/pip install --target /tmp/fastai-site --no-deps "fastai==2.8.*" "fastcore>=2.2.22" '
           'fasttransform "fastprogress==1.0.3" fastdownload "plum-dispatch<2.10" beartype rich cloudpickle')


def recipe(data: Path, out: Path, sizes: list[int], shorter_side: int, pretrained: bool = False) -> dict:
    """The workflow recipe doing the work above (see config/schema.yaml for every key)."""
    unfrozen_lrs = [[2.0e-3, 5.0e-3, 5.0e-3]] + [[1.0e-3, 3.0e-3, 3.0e-3]] * (len(sizes) - 1)  # the old demo's
    model = {"arch": "resnet18", "weights": "none"}
    frozen_lr, train = 1.0e-2, {}
    if pretrained:  # fastai's own choices (bench/fastai_same_work.py): Adam, wd 0.01, train_bn, its lrs
        frozen_lr, train = 2.0e-3, {"optimizer": "adamw", "weight_decay": 0.01, "train_bn": True}
        unfrozen_lrs = [[8.0e-4, 1.26e-3, 2.0e-3]] * len(sizes)  # slice(8e-4, 2e-3) over fastai's 3 groups
        model = {"arch": "tf_efficientnet_lite0", "weights": "packaged"}
    return {
        "data_dir": str(data), "out_dir": str(out), "seed": 42, "device": "auto",
        "data": {"layout": "csv"},
        "split": {"method": "fastai"},
        "images": {"shorter_side": shorter_side},
        "model": {**model, "ps": [0.25, 0.5], "xtra_fc": [512]},  # = fastai v2's head
        "transforms": {"augmentation": "basic", "max_zoom": 1.1},
        "loader": {"batch_size": 32, "num_workers": 0},
        "train": train,
        "head": {"size": sizes[0], "lr_find": False,
                 "precomputed": [{"lr": frozen_lr, "n_cycle": 1}],  # the schema's minimum: 1 epoch on activations
                 "augmented": [{"lr": frozen_lr, "n_cycle": 1, "cycle_len": 1}]},  # the frozen epoch
        "finetune": [{"size": size, "unfreeze": True, "fits": [{"lr": lrs, "n_cycle": 1, "cycle_len": EPOCHS}]}
                     for size, lrs in zip(sizes, unfrozen_lrs)],
        "tta": {"n_aug": N_AUG},
        "calibration": {"enabled": False},  # the submission is then the TTA mean
    }


def timed(command: list[str], log: Path, env: dict | None = None) -> float:
    """Wall-clock seconds of a subprocess, its output in `log`; stops with the log's tail if it fails."""
    started = time.perf_counter()
    with log.open("w") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - started
    if code:
        tail = "".join(log.read_text().splitlines(True)[-30:])
        sys.exit(f"{command[:3]} failed ({code}); last lines of {log}:\n{tail}")
    return seconds


def run_ours(work: Path, data: Path, sizes: list[int], shorter_side: int, solution: pd.DataFrame,
             pretrained: bool) -> dict:
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / ".snakemake", ignore_errors=True)  # no cached metadata: a fresh run
    config = work / "ours.yaml"
    config.write_text(yaml.safe_dump(recipe(data, out, sizes, shorter_side, pretrained), sort_keys=False))
    seconds = timed([sys.executable, "-m", "snakemake", str(out / "submission.csv"), "--snakefile",
                     str(REPO / "Snakefile"), "--directory", str(work), "--cores", "all", "--configfile", str(config)],
                    work / "ours.log")
    _, classes = read_labeled_table(out / "split.csv")
    ids = read_test_table(out / "test.csv")["id"].tolist()
    scores = hidden_test(passes.tta_mean(np.load(out / "tta" / "test_passes.npy"), N_AUG), ids, classes, solution)
    stages = {tsv.stem: round(float(pd.read_csv(tsv, sep="\t")["s"].iloc[0]), 1)
              for tsv in sorted((out / "benchmarks").glob("*.tsv"))}
    return {"seconds": round(seconds, 1), **scores, "stages": stages}


def packaged_lite0_for_timm(work: Path) -> Path:
    """The packaged ImageNet Lite0 tensors in timm's layout, for fastai's own timm model to load."""
    import torch

    from pipeline.models import backbones

    path = work / "tf_efficientnet_lite0_packaged.pth"
    torch.save(backbones.create(backbones.resolve("tf_efficientnet_lite0"), "packaged").state_dict(), path)
    return path


def run_fastai(work: Path, data: Path, sizes: list[int], python: str, env: dict, workers: int | None,
               solution: pd.DataFrame, pretrained: bool) -> dict:
    predictions = work / "fastai_preds.npz"
    command = [python, str(REPO / "bench" / "fastai_same_work.py"), "--data-dir", str(data), "--valid-ids",
               str(work / "valid_ids.txt"), "--out", str(predictions), "--sizes", *map(str, sizes),
               "--epochs", str(EPOCHS), "--n-aug", str(N_AUG)]
    command += [] if workers is None else ["--workers", str(workers)]
    command += ["--timm-weights", str(packaged_lite0_for_timm(work))] if pretrained else []
    seconds = timed(command, work / "fastai.log", env)
    saved = np.load(predictions)
    ids, classes = saved["ids"].tolist(), saved["classes"].tolist()
    plain, augmented = saved["plain"].astype(np.float64), saved["augmented"].astype(np.float64)
    fastai_tta = 0.75 * augmented + 0.25 * plain  # learn.tta's default, torch.lerp(augmented, plain, 0.25)
    equal_mean = (plain + N_AUG * augmented) / (N_AUG + 1)  # ours: the equal mean of all 5 passes
    fastai_tta, equal_mean = (p / p.sum(axis=1, keepdims=True) for p in (fastai_tta, equal_mean))  # float32 sums
    return {"seconds": round(seconds, 1), **hidden_test(fastai_tta, ids, classes, solution),
            "equal_mean": hidden_test(equal_mean, ids, classes, solution),
            "phases": {name: round(float(s), 1) for name, s in zip(saved["phase_names"], saved["phase_seconds"])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1200, help="labelled images (n + n-test <= 1797, the digits)")
    parser.add_argument("--n-test", type=int, default=400, help="held-out test images, labels in solution.csv")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="training sizes, in order")
    parser.add_argument("--shorter-side", type=int, help="our resize cache (default: 1.1 x the last size, up to 8)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_fastai_compare")
    parser.add_argument("--fastai-path", help="prepended to the fastai process's PYTHONPATH, e.g. /tmp/fastai-site")
    parser.add_argument("--fastai-python", default=sys.executable, help="interpreter for the fastai script")
    parser.add_argument("--fastai-workers", type=int, help="fastai's num_workers (default: fastai's own)")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--skip-fastai", action="store_true")
    parser.add_argument("--pretrained", action="store_true", help="both from the packaged ImageNet Lite0 weights")
    args = parser.parse_args()
    shorter_side = args.shorter_side or -(-int(1.1 * args.sizes[-1]) // 8) * 8

    work = args.work.resolve()
    data = work / f"data_{args.n}_{args.n_test}"
    if not (data / "labels.csv").exists():
        demo_data.build(data, "csv", n_labeled=args.n, n_test=args.n_test, seed=0, large_fraction=0.03,
                   sizes=demo_data.ImageSizes())
    solution = pd.read_csv(data / "solution.csv", dtype={"id": str})
    split_params = recipe_defaults.complete({"layout": "csv", "method": "fastai"}, RECIPE_KEYS)
    split = make_split(read_labeled(data, "csv"), split_params)  # the split stage's own call
    (work / "valid_ids.txt").write_text("\n".join(split.loc[split["is_valid"], "id"]) + "\n")
    figures = {"n": args.n, "n_test": args.n_test, "sizes": args.sizes, "shorter_side": shorter_side,
               "pretrained": args.pretrained}

    if not args.skip_ours:
        figures["ours"] = run_ours(work, data, args.sizes, shorter_side, solution, args.pretrained)
        ours_split, _ = read_labeled_table(work / "ours" / "split.csv")
        assert set(ours_split.loc[ours_split["is_valid"], "id"]) == set(split.loc[split["is_valid"], "id"])

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [args.fastai_path, os.environ.get("PYTHONPATH")]))}
    has_fastai = subprocess.run([args.fastai_python, "-c", "import fastai.vision.all"], env=env,
                                capture_output=True).returncode == 0
    if has_fastai and not args.skip_fastai:
        figures["fastai"] = run_fastai(work, data, args.sizes, args.fastai_python, env, args.fastai_workers, solution,
                                       args.pretrained)

    if "ours" in figures and "fastai" in figures:
        ratio = figures["ours"]["seconds"] / figures["fastai"]["seconds"]
        report("fastai_compare", figures, ratio, "<= 0.70x", ratio <= 0.70)
        return
    figures["machine"] = machine()
    print(json.dumps({"benchmark": "fastai_compare", **figures}))
    if not has_fastai:
        print(f"fastai_compare: no ratio: `import fastai.vision.all` fails with {args.fastai_python}. Install "
              f"fastai next to this project's torch, outside .venv:\n  {INSTALL}\n"
              "then rerun with --fastai-path /tmp/fastai-site")


if __name__ == "__main__":
    main()
