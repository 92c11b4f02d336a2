"""The regularisers measured out of fold: the K-fold demo (3 folds) as a baseline, then once with each regulariser on
alone in every fine-tune size, same epochs and seeds, then with any combination given. The real workflow runs each
variant in one out_dir, so only the fine-tune sizes, TTA, the out-of-fold stage and what follows rerun (the split,
the resize cache, the activations, the head and its lr_find are the baseline's). Prints a Markdown table: OOF log
loss and accuracy before calibration (fastai's TTA mean) and after it, the temperature fitted on every OOF row,
the hidden-test log loss and accuracy of the submission (`data/demo/solution.csv`, which no stage reads), and the
seconds the variant's fine-tune and TTA jobs took (Snakemake's benchmark files, summed over the folds).

    python bench/regularisers.py [--variants baseline mix ...] [--combine label_smoothing ema] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from common import machine  # puts the repository on sys.path
from demo_scores import run_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [ROOT / "config" / "demo.yaml", ROOT / "config" / "demo_kfold.yaml"]
OUT = ROOT / "outputs" / "bench_regularisers"
# Each regulariser at the value its usual recipe takes (timm's train.py defaults, scaled to the demo's ~70 steps a
# size where they are step counts): chosen before any run, never tuned on these figures.
VARIANTS = {
    "baseline": {},
    "mix": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0},           # timm's ImageNet recipe: --mixup 0.8 --cutmix 1.0
    "label_smoothing": {"label_smoothing": 0.1},                # timm's --smoothing 0.1
    "trivial_augment": {"auto_augment": "trivial_augment"},
    "random_erasing": {"random_erasing": 0.25},                 # timm's --reprob 0.25
    "ema": {"ema_decay": 0.95, "ema_warmup": True},             # a ~20-step horizon over a size's ~70 steps
    "drop_path": {"drop_path": 0.1},
}


def override(regularise: dict, folder: Path) -> Path:
    """A recipe fragment giving every fine-tune size of the demo `regularise` (a list replaces, so all of it)."""
    finetune = copy.deepcopy(yaml.safe_load(RECIPES[0].read_text())["finetune"])
    for step in finetune:
        step["regularise"] = regularise
    path = folder / "override.yaml"
    path.write_text(yaml.safe_dump({"out_dir": str(OUT), "finetune": finetune}))
    return path


def job_seconds(out: Path) -> float:
    """What this variant's own jobs took: every fine-tune size's and TTA's, in every fold."""
    tables = [*out.glob("folds/*/benchmarks/finetune_*.tsv"), *out.glob("folds/*/benchmarks/tta.tsv")]
    return sum(float(pd.read_csv(table, sep="\t")["s"].iloc[0]) for table in tables)


def run(name: str, regularise: dict) -> dict:
    folder = OUT.parent / "bench_regularisers_recipes" / name
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(ROOT),
               "--cores", "all", "--configfile", *map(str, RECIPES), str(override(regularise, folder))]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{name}: snakemake failed\n{result.stderr[-3000:]}")
    calibration = json.loads((OUT / "calibration" / "calibration.json").read_text())
    solution = pd.read_csv(ROOT / "data" / "demo" / "solution.csv", dtype={"id": str})  # built by the first run
    hidden = run_scores(OUT, solution, "oof/test_passes.npy")["hidden_test"]["submission"]
    return {"variant": name, "regularise": regularise,
            "oof_logloss_tta": round(calibration["logloss_tta"], 4),
            "oof_accuracy_tta": round(calibration["accuracy_tta"], 4),
            "oof_logloss_calibrated": round(calibration["logloss_calibrated"], 4),
            "oof_accuracy_calibrated": round(calibration["accuracy_calibrated"], 4),
            "chosen": calibration["chosen"], "temperature": round(calibration["fitted_on_all"]["temperature"], 3),
            "hidden_logloss": hidden["logloss"], "hidden_accuracy": hidden["accuracy"],
            "job_seconds": round(job_seconds(OUT), 1), "run_seconds": round(time.perf_counter() - started, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| variant | OOF log loss (TTA) | OOF acc. (TTA) | OOF log loss calibrated | OOF acc. calibrated | "
             "fitted T | hidden-test log loss | hidden-test acc. | fine-tune + TTA jobs (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['oof_logloss_tta']:.4f} | {r['oof_accuracy_tta']:.4f} | "
              f"{r['oof_logloss_calibrated']:.4f} | {r['oof_accuracy_calibrated']:.4f} | {r['temperature']:.3f} | "
              f"{r['hidden_logloss']:.4f} | {r['hidden_accuracy']:.4f} | {r['job_seconds']:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--combine", nargs="+", default=[], choices=[name for name in VARIANTS if name != "baseline"],
                        help="also run these variants' regularisers together")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    runs = [(name, VARIANTS[name]) for name in args.variants]
    if args.combine:
        together = {key: value for name in args.combine for key, value in VARIANTS[name].items()}
        runs.append(("+".join(args.combine), together))
    rows = []
    for name, regularise in runs:
        rows.append(run(name, regularise))
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    print(f"\n{machine()}\n\n{table(rows)}")


if __name__ == "__main__":
    main()
