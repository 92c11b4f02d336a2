"""Runs read back from a tracking store as people read them: the headline figures whatever a run was scored on, one
table row per run (CV next to the leaderboard score), and the tracking rule's pages. No MLflow import: these take
MLflow's Run objects as they come, so the tracking rule still writes its pages when MLflow itself failed."""
from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.report.pages import section, write_page
from pipeline.io import save_figure

LEADERBOARD = "leaderboard"  # the metric `pipeline.compare --lb` records
# The headline figures as `compare` shows them: (label, the metric's name after its scope, oof_ or valid_).
HEADLINE_ROWS = (("log loss, no TTA", "logloss_no_tta"), ("log loss, TTA", "logloss_tta"),
                 ("log loss, calibrated", "logloss_calibrated"), ("accuracy, TTA", "accuracy_tta"),
                 ("accuracy, calibrated", "accuracy_calibrated"))
CV = "logloss_calibrated"  # the CV figure set against the leaderboard: the submitted probabilities' log loss
RUN_COLUMNS = ["run", "id", "started", "scored on", "CV log loss (TTA)", "CV log loss (calibrated)", "CV accuracy",
               "leaderboard"]
RUNS_PAGE = "runs.html"      # the tracking rule's page for `snakemake --report`, refreshed by `compare --lb`
CV_VS_LB = "cv_vs_lb.png"    # beside it, once enough runs have a leaderboard score
LB_RUNS_NEEDED = 3


def scope(run) -> str:
    """Where a run's figures were scored: "oof" (out of fold) or "valid" (one validation set)."""
    return "oof" if "oof_logloss_tta" in run.data.metrics else "valid"


def figure(run, name: str) -> float | None:
    """A headline figure of a run whatever its scope (`logloss_tta`), or the leaderboard score."""
    return run.data.metrics.get(name if name == LEADERBOARD else f"{scope(run)}_{name}")


def runs_table(runs: list) -> pd.DataFrame:
    """One row per run, in the order given: when, the CV figures, and the leaderboard score where one was recorded."""
    return pd.DataFrame(columns=RUN_COLUMNS, data=[{
        "run": run.info.run_name, "id": run.info.run_id[:8],
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
        "scored on": "out of fold" if scope(run) == "oof" else "validation",
        "CV log loss (TTA)": figure(run, "logloss_tta"), "CV log loss (calibrated)": figure(run, CV),
        "CV accuracy": figure(run, "accuracy_calibrated"), "leaderboard": figure(run, LEADERBOARD),
    } for run in runs])


def write_views(folder: Path, experiment: str, runs: list, problem: str | None = None) -> None:
    """The experiment's runs as a page (CV next to LB) in `folder`, with the CV-against-LB plot once enough runs have
    a leaderboard score; with `problem`, what kept this run from being logged."""
    folder, table = Path(folder), runs_table(runs)
    parts = [f"<h2>This run was not logged</h2><p>{html.escape(problem)}</p>"] if problem else []
    if len(table):
        parts.append(section(f"Runs of experiment {experiment!r}, newest first", table, index=False,
                             note="Record a public leaderboard score with python -m pipeline.compare --lb SCORE [RUN]"))
    plot = folder / CV_VS_LB
    scored = table.dropna(subset=["leaderboard", "CV log loss (calibrated)"])
    if len(scored) >= LB_RUNS_NEEDED:
        cv_against_leaderboard(scored, plot)
        parts.append(f"<h2>CV against the leaderboard</h2><img alt='CV against the leaderboard' "
                     f"src='data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}'>")
    else:
        plot.unlink(missing_ok=True)  # drawn from runs this store no longer has
        parts.append(f"<p>{len(scored)} of the {LB_RUNS_NEEDED} runs with a leaderboard score that the CV-against-LB "
                     "plot needs.</p>")
    write_page(parts or ["<p>No runs logged yet.</p>"], folder / RUNS_PAGE)


def cv_against_leaderboard(scored: pd.DataFrame, path) -> None:
    """Each run's calibrated CV log loss against its public leaderboard score: does CV track LB?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cv, lb = scored["CV log loss (calibrated)"].to_numpy(float), scored["leaderboard"].to_numpy(float)
    fig, axis = plt.subplots(figsize=(6, 4.5))
    axis.scatter(cv, lb, color="tab:blue")
    for x, y, name in zip(cv, lb, scored["run"]):
        axis.annotate(str(name), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    low, high = min(cv.min(), lb.min()), max(cv.max(), lb.max())
    axis.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="LB = CV")
    slope, intercept = np.polyfit(cv, lb, 1)
    axis.plot([low, high], [slope * low + intercept, slope * high + intercept], color="tab:orange", linewidth=1,
              label=f"fit: LB = {slope:.2f} CV {intercept:+.3f}")
    rank = pd.Series(cv).corr(pd.Series(lb), method="spearman")
    axis.set_xlabel("CV log loss (calibrated, out of sample)")
    axis.set_ylabel("public leaderboard score")
    axis.set_title(f"CV against the leaderboard: {len(scored)} runs, Spearman {rank:.2f}", fontsize=10)
    axis.legend(fontsize=8)
    save_figure(fig, path)
