"""What a sweep leaves in out_dir/sweep/<study>: trials.csv, best.yaml (a configfile fragment with the winning
overrides), Optuna's plots, and report.html, one page with all of them."""
from __future__ import annotations

import html
import warnings
from pathlib import Path

import optuna
import pandas as pd
import yaml

from pipeline.io import save_figure, write_csv, write_text
from pipeline.sweep import study as studies

PLOTS = {
    "history.png": ("optimisation history", "plot_optimization_history"),
    "importances.png": ("parameter importances", "plot_param_importances"),
    "slices.png": ("each key against the score", "plot_slice"),
}
EARLY_PLOT = "early_losses.png"
EARLY_CAPTION = "validation loss after the first fine-tune size, what the pruner compares (pruned: grey crosses)"
STATE_MARKERS = {"COMPLETE": ("o", "tab:blue"), "PRUNED": ("x", "grey"), "FAIL": ("s", "tab:red")}


def trials_table(study: optuna.Study, keys: list[str]) -> pd.DataFrame:
    """One row per trial: number, member, state, score, loss after the first fine-tune size, seconds, and each
    swept key's value."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        jobs = trial.user_attrs.get("jobs_run")
        rows.append({"number": trial.number, "member": trial.user_attrs.get("member"), "state": trial.state.name,
                     "score": trial.value if trial.state.name == "COMPLETE" else None,
                     "early_loss": trial.intermediate_values.get(0),
                     "accuracy": trial.user_attrs.get("accuracy"), "seconds": studies.seconds(trial),
                     "retry_of": trial.user_attrs.get("retry_of"),
                     "jobs_run": " ".join(f"{rule}:{n}" for rule, n in jobs.items()) if jobs is not None else None,
                     **{key: trial.params.get(key) for key in keys}})
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, path: Path) -> None:
    write_csv(table, path)


def best_fragment(overrides: dict, lines: list[str]) -> str:
    """best.yaml: the winning overrides, with where they come from and how they scored as comments."""
    header = "".join(f"# {line}\n" for line in lines)
    return header + yaml.safe_dump(overrides, sort_keys=False)


def write_plots(study: optuna.Study, folder: Path) -> dict[str, str]:
    """Optuna's matplotlib plots of the study; a plot Optuna cannot draw yet (one finished trial, say) is left out,
    with the reason in the returned map."""
    from optuna.visualization import matplotlib as optuna_plots

    skipped = {}
    for name, (_, function) in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                drawn = getattr(optuna_plots, function)(study)
            figure = drawn.flat[0].figure if hasattr(drawn, "flat") else drawn.figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 7), max(figure.get_size_inches()[1], 4))
            save_figure(figure, folder / name)
        except (ValueError, RuntimeError, ZeroDivisionError) as reason:
            skipped[name] = str(reason)
            (folder / name).unlink(missing_ok=True)
    early_plot(study, folder / EARLY_PLOT)
    return skipped


def early_plot(study: optuna.Study, path: Path) -> None:
    """Each trial's loss after its first fine-tune size by trial number, marked by what became of it."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for state, (marker, colour) in STATE_MARKERS.items():
        points = [(t.number, t.intermediate_values[0]) for t in study.get_trials(deepcopy=False)
                  if t.state.name == state and 0 in t.intermediate_values]
        if points:
            axes.scatter(*zip(*points), marker=marker, color=colour, label=state.lower(), s=40)
    axes.set_xlabel("trial")
    axes.set_ylabel("validation loss after the first fine-tune size")
    axes.legend()
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def report_page(title: str, summary: list[str], table: pd.DataFrame, folder: Path) -> str:
    """report.html: the summary, the plots drawn, and the trials table (pruned and failed rows shaded)."""
    shading = {"PRUNED": "#f3f3f3", "FAIL": "#fbe3e3"}
    rows = table.style.apply(lambda row: [f"background: {shading.get(row['state'], 'white')}"] * len(row), axis=1) \
        .format(precision=4, na_rep="").hide(axis="index").to_html()
    figures = "".join(f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                      "</figcaption></figure>" for name, caption in captions().items() if (folder / name).exists())
    items = "".join(f"<li>{html.escape(line)}</li>" for line in summary)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1100px} img{max-width:100%} td,th{padding:2px 8px}"
            f"</style></head><body><h1>{html.escape(title)}</h1><ul>{items}</ul>{figures}<h2>Trials</h2>{rows}"
            "</body></html>")


def captions() -> dict[str, str]:
    return {**{name: caption for name, (caption, _) in PLOTS.items()}, EARLY_PLOT: EARLY_CAPTION}


def write_report(title: str, summary: list[str], table: pd.DataFrame, folder: Path) -> None:
    write_text(report_page(title, summary, table, folder), folder / "report.html")
