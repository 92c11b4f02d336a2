"""The demo blend measured: the K-fold demo's 3 folds with the members of config/demo_blend.yaml, their blend, the
pseudo-label round and the blend with its students, from one `snakemake` run; then each model's out-of-fold figures
next to its hidden-test ones (`data/demo/solution.csv`, which no stage reads). Prints a Markdown table: per member
(and the students) the OOF log loss and accuracy of its TTA mean and the hidden-test log loss and accuracy of its
fold ensemble; per blend the cross-fitted OOF figures and the hidden-test ones of its test prediction; for each,
calibrated as the calibrate stage calibrates the final blend (plain-pass weight and temperature fitted on its
out-of-fold rows: the cross-fitted OOF figure, and the hidden test after applying the fit to its test prediction),
which is what its submission would score without the models after it; the run's submission; the pseudo-labels each
fold used; and the seconds each member's jobs took.

    python bench/blend.py [--json out.json]
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
from pipeline.predict import passes  # noqa: E402
from pipeline.data.dataset import class_indices, read_test_table  # noqa: E402
from pipeline.compete.calibration import calibrate, calibrated_probs, cross_fit_groups  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [ROOT / "config" / name for name in ("demo.yaml", "demo_kfold.yaml", "demo_blend.yaml")]


def job_seconds(member_dir: Path) -> float:
    """What a member's own jobs took (Snakemake's benchmark files): every fold's precompute ... TTA."""
    return sum(float(pd.read_csv(table, sep="\t")["s"].iloc[0]) for table in member_dir.glob("folds/*/benchmarks/*.tsv"))


def calibrated(rows_csv: Path, passes_dir: Path, n_aug: int, ids, classes, solution) -> dict:
    """A model calibrated alone, as the calibrate stage calibrates the final blend: the cross-fitted OOF log loss of
    the candidate it would choose, and the hidden-test log loss of that candidate's fit applied to the test passes."""
    rows = pd.read_csv(rows_csv, dtype={"id": str})
    groups, _ = cross_fit_groups(rows, seed=42)
    report, _ = calibrate(np.load(passes_dir / "valid_passes.npy").astype(np.float64),
                          class_indices(rows["label"], classes).to_numpy(), groups, n_aug, enabled=True)
    test = calibrated_probs(np.load(passes_dir / "test_passes.npy").astype(np.float64), report["plain_weight"],
                            report["temperature"])
    return {"calibrated_oof_logloss": round(report["logloss_calibrated"], 4),
            "calibrated_hidden_logloss": hidden_test(test, ids, classes, solution)["logloss"],
            "temperature": round(report["temperature"], 3)}


def model_row(name: str, member_dir: Path, ids, classes, solution) -> dict:
    cv = json.loads((member_dir / "oof" / "cv_metrics.json").read_text())
    test = passes.tta_mean(np.load(member_dir / "oof" / "test_passes.npy"), cv["n_aug"])
    hidden = hidden_test(test, ids, classes, solution)
    return {"model": name, "oof_logloss": round(cv["oof_logloss"], 4), "oof_accuracy": round(cv["oof_accuracy"], 4),
            "hidden_logloss": hidden["logloss"], "hidden_accuracy": hidden["accuracy"],
            **calibrated(member_dir / "oof.csv", member_dir / "oof", cv["n_aug"], ids, classes, solution),
            "job_seconds": round(job_seconds(member_dir), 1)}


def blend_row(name: str, folder: Path, ids, classes, solution) -> dict:
    weights = json.loads((folder / "weights.json").read_text())
    hidden = hidden_test(np.load(folder / "test_passes.npy")[0].astype(np.float64), ids, classes, solution)
    return {"model": f"{name} (cross-fitted)", "oof_logloss": round(weights["blend_oof_logloss"], 4),
            "oof_accuracy": round(weights["blend_oof_accuracy"], 4), "hidden_logloss": hidden["logloss"],
            "hidden_accuracy": hidden["accuracy"],
            **calibrated(folder / "oof.csv", folder, 0, ids, classes, solution),  # both passes are the blend
            "weights": {member["name"]: round(member["weight"], 3) for member in weights["members"]
                        if member["weight"] is not None}}


def table(rows: list[dict]) -> str:
    lines = ["| model | OOF log loss | OOF acc. | hidden-test log loss | hidden-test acc. | calibrated alone: OOF / "
             "hidden-test log loss (T) | jobs (s) | weights |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        alone = (f"{r['calibrated_oof_logloss']:.4f} / {r['calibrated_hidden_logloss']:.4f} ({r['temperature']})"
                 if "temperature" in r else "")
        lines.append(f"| {r['model']} | {r['oof_logloss']:.4f} | {r['oof_accuracy']:.4f} | {r['hidden_logloss']:.4f} | "
                     f"{r['hidden_accuracy']:.4f} | {alone} | {r.get('job_seconds', '')} | "
                     f"{', '.join(f'{k} {v}' for k, v in r.get('weights', {}).items())} |")
    return "\n".join(lines)


def snakemake(recipes: list[Path]) -> float:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(ROOT),
               "--cores", "all", "--configfile", *map(str, recipes)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"snakemake failed\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def scores(out: Path, solution: pd.DataFrame, pseudo_round: bool) -> dict:
    """Every model of the run in out_dir, its blends, its submission and, with the round, its pseudo-labels (the
    recipe says which folders are this run's: an earlier recipe's may still be on disk)."""
    ids = read_test_table(out / "test.csv")["id"].tolist()
    weights = json.loads((out / "blend" / "weights.json").read_text())
    classes = weights["classes"]
    final = json.loads((out / "cv_metrics.json").read_text())
    chains = [member["name"] for member in weights["members"]]
    students = sorted(path.name for path in (out / "members").glob("*-pseudo")) if pseudo_round else []
    blends = ["blend", "blend_pseudo"] if students else ["blend"]
    if abs(json.loads((out / blends[-1] / "weights.json").read_text())["blend_oof_logloss"]
           - final["oof_logloss"]) > 1e-9:
        sys.exit(f"{out}: cv_metrics.json is not the last blend's: the run's outputs are not this recipe's")
    rows = [model_row(name, out / "members" / name, ids, classes, solution) for name in chains + students]
    rows += [blend_row(name, out / name, ids, classes, solution) for name in blends]
    calibration = json.loads((out / "calibration" / "calibration.json").read_text())
    submission = pd.read_csv(out / "submission.csv", dtype={"id": str})
    hidden = hidden_test(submission[classes].to_numpy(), submission["id"].tolist(), classes, solution)
    rows.append({"model": f"submission (calibrated: {calibration['chosen']}, T {calibration['temperature']:.2f})",
                 "oof_logloss": round(calibration["logloss_calibrated"], 4),
                 "oof_accuracy": round(calibration["accuracy_calibrated"], 4),
                 "hidden_logloss": hidden["logloss"], "hidden_accuracy": hidden["accuracy"]})
    pseudo = [json.loads((out / "members" / student / "folds" / str(fold) / "pseudo_labels.json").read_text())
              for student in students for fold in weights["folds"]]
    return {"rows": rows, "pseudo_labels": pseudo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    recipe = yaml.safe_load(RECIPES[-1].read_text())
    wall = snakemake(RECIPES)
    solution = pd.read_csv(ROOT / "data" / "demo" / "solution.csv", dtype={"id": str})  # built by the run
    report = {"machine": machine(), "wall_seconds": round(wall, 1),
              **scores(ROOT / recipe["out_dir"], solution, pseudo_round="pseudo" in recipe)}
    print(f"{machine()}\n\nsnakemake: {wall:.0f} s\n\n{table(report['rows'])}\n")
    for fold in report["pseudo_labels"]:
        print(f"fold {fold['fold']}: {fold['n_used']} of {fold['n_test']} test images at >= {fold['threshold']} "
              f"(mean confidence {fold['mean_confidence']:.3f}), per class {fold['class_balance']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
