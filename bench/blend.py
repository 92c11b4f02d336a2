"""The demo blend measured: the K-fold demo's 3 folds with the members of config/demo_blend.yaml, their blend, the
pseudo-label round and the blend with its students, from one `snakemake` run; then each model's out-of-fold figures
next to its hidden-test ones (`data/demo/solution.csv`, which no stage reads). Prints a Markdown table: per member
(and the students) the OOF log loss and accuracy of its TTA mean and the hidden-test log loss and accuracy of its
fold ensemble; per blend the cross-fitted OOF figures and the hidden-test ones of its test prediction; the
calibrated submission; the pseudo-labels each fold used; and the seconds each member's jobs took.

    python bench/blend.py [--json out.json] [--recipe config/demo_blend.yaml]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from common import machine  # puts the repository on sys.path
from demo_scores import hidden_test  # noqa: E402
from pipeline import passes  # noqa: E402
from pipeline.data import read_test_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = [ROOT / "config" / "demo.yaml", ROOT / "config" / "demo_kfold.yaml"]


def job_seconds(member_dir: Path) -> float:
    """What a member's own jobs took (Snakemake's benchmark files): every fold's precompute ... TTA."""
    return sum(float(pd.read_csv(table, sep="\t")["s"].iloc[0]) for table in member_dir.glob("folds/*/benchmarks/*.tsv"))


def model_row(name: str, member_dir: Path, ids, classes, solution) -> dict:
    cv = json.loads((member_dir / "oof" / "cv_metrics.json").read_text())
    test = passes.tta_mean(np.load(member_dir / "oof" / "test_passes.npy"), cv["n_aug"])
    hidden = hidden_test(test, ids, classes, solution)
    return {"model": name, "oof_logloss": round(cv["oof_logloss"], 4), "oof_accuracy": round(cv["oof_accuracy"], 4),
            "hidden_logloss": hidden["logloss"], "hidden_accuracy": hidden["accuracy"],
            "job_seconds": round(job_seconds(member_dir), 1)}


def blend_row(name: str, folder: Path, ids, classes, solution) -> dict:
    weights = json.loads((folder / "weights.json").read_text())
    hidden = hidden_test(np.load(folder / "test_passes.npy")[0].astype(np.float64), ids, classes, solution)
    return {"model": f"{name} (cross-fitted)", "oof_logloss": round(weights["blend_oof_logloss"], 4),
            "oof_accuracy": round(weights["blend_oof_accuracy"], 4), "hidden_logloss": hidden["logloss"],
            "hidden_accuracy": hidden["accuracy"],
            "weights": {member["name"]: round(member["weight"], 3) for member in weights["members"]
                        if member["weight"] is not None}}


def table(rows: list[dict]) -> str:
    lines = ["| model | OOF log loss | OOF acc. | hidden-test log loss | hidden-test acc. | jobs (s) | weights |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['oof_logloss']:.4f} | {r['oof_accuracy']:.4f} | {r['hidden_logloss']:.4f} | "
              f"{r['hidden_accuracy']:.4f} | {r.get('job_seconds', '')} | "
              f"{', '.join(f'{k} {v}' for k, v in r.get('weights', {}).items())} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "config" / "demo_blend.yaml")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(ROOT),
               "--cores", "all", "--configfile", *map(str, BASE), str(args.recipe)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"snakemake failed\n{result.stderr[-3000:]}")
    wall = time.perf_counter() - started
    recipe = yaml.safe_load(args.recipe.read_text())
    out = ROOT / recipe["out_dir"]
    solution = pd.read_csv(ROOT / "data" / "demo" / "solution.csv", dtype={"id": str})
    ids = read_test_table(out / "test.csv")["id"].tolist()
    classes = json.loads((out / "blend" / "weights.json").read_text())["classes"]
    chains = sorted(path for path in (out / "members").iterdir() if (path / "oof" / "cv_metrics.json").is_file())
    rows = [model_row(path.name, path, ids, classes, solution) for path in chains]
    rows += [blend_row(name, out / name, ids, classes, solution) for name in ("blend", "blend_pseudo")
             if (out / name / "weights.json").is_file()]
    calibration = json.loads((out / "calibration" / "calibration.json").read_text())
    submission = pd.read_csv(out / "submission.csv", dtype={"id": str})
    hidden = hidden_test(submission[classes].to_numpy(), submission["id"].tolist(), classes, solution)
    rows.append({"model": f"submission (calibrated: {calibration['chosen']}, T {calibration['temperature']:.2f})",
                 "oof_logloss": round(calibration["logloss_calibrated"], 4),
                 "oof_accuracy": round(calibration["accuracy_calibrated"], 4),
                 "hidden_logloss": hidden["logloss"], "hidden_accuracy": hidden["accuracy"]})
    pseudo = [json.loads(path.read_text()) for path in sorted(out.glob("members/*-pseudo/folds/*/pseudo_labels.json"))]
    report = {"machine": machine(), "wall_seconds": round(wall, 1), "rows": rows, "pseudo_labels": pseudo}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"{machine()}\n\nsnakemake: {wall:.0f} s\n\n{table(rows)}\n")
    for fold in pseudo:
        print(f"fold {fold['fold']}: {fold['n_used']} of {fold['n_test']} test images at >= {fold['threshold']} "
              f"(mean confidence {fold['mean_confidence']}), per class {fold['class_balance']}")


if __name__ == "__main__":
    main()
