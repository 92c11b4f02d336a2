"""The tracking rule: this workflow run as one MLflow run, logged once its results are complete. Snakemake runs it only
when a result changed, so a rerun with nothing to do logs nothing.

The run holds the whole recipe as flat params, the git commit, the data's fingerprint, the out_dir and the stages that
ran since the out_dir's last logged run as tags, the headline figures (no TTA, TTA, calibrated), each training stage's
per-epoch curves, the blends' weights and the results' files; each fold and member is a nested run. A store that
cannot be reached, or stays locked, costs one warning line: the results are complete whatever happens here, and the
mark this stage writes makes the next run try again.

    python -m pipeline.stages.track --files out/submission.csv ... --recipe '{"data_dir": ...}' \
        --mark out/tracking/run.json --params '{"uri": "sqlite:///mlflow.db", "experiment": "demo",
        "log_models": false, "scope": "valid", "models": [{"member": null, "fold": null, "dir": "out"}],
        "member_dirs": {}, "checkpoints": []}'
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pipeline import cli
from pipeline.tracking import record as run_record
from pipeline.tracking import runs as tracked_runs
from pipeline.data.dataset import data_fingerprint
from pipeline.io import write_json
from pipeline.tracking.record import RunRecord

REPOSITORY = Path(__file__).resolve().parents[2]
RECIPE_KEYS = ("tracking",)
WORKFLOW_KEYS = ("scope", "recipe_digest", "models", "member_dirs", "checkpoints")


def run_tags(record: RunRecord, reran: list[str]) -> dict[str, str]:
    commit, dirty = run_record.git_state(REPOSITORY)
    return {"mlflow.source.git.commit": commit, "git_dirty": dirty, "mlflow.source.name": str(REPOSITORY / "Snakefile"),
            "data_fingerprint": data_fingerprint(record.recipe["data_dir"]), "out_dir": str(record.out_dir.absolute()),
            "stages_rerun": ", ".join(reran) or "none"}


def describe(changed: list | None, reran: list[str]) -> str:
    """The run's description in the MLflow UI: what changed in the recipe since the out_dir's last logged run."""
    if changed is None:
        recipe = "The out_dir's first logged run."
    elif changed:
        recipe = "Recipe changes since the out_dir's last logged run:\n" + "\n".join(
            f"- `{key}`: {old} → {new}" for key, old, new in changed)
    else:
        recipe = "The recipe is unchanged since the out_dir's last logged run (code or data changed)."
    return f"{recipe}\n\nStages that ran: {', '.join(reran) or 'none'}."


def root_cause(error: BaseException) -> str:
    """The innermost error behind a failure, in one short line: MLflow wraps "Connection refused" or "database is
    locked" in layers of retries and URLs."""
    for _ in range(20):  # a chain, not a cycle
        if (inner := error.__cause__ or error.__context__) is None:
            break
        error = inner
    return " ".join(f"{type(error).__name__}: {error}".split())[:200]


def log(record: RunRecord, uri: str, experiment: str) -> tuple[dict, list]:
    """Log the run; returns the mark's fields and the experiment's runs (for the views)."""
    from pipeline.tracking import mlflow_log as tracking  # MLflow's import: this stage's alone

    with tracking.store_lock(uri):
        client = tracking.MlflowClient(uri)
        experiment_id = tracking.experiment_id(client, experiment)
        previous = tracking.previous_run(client, experiment_id, str(record.out_dir.absolute()))
        reran = run_record.stages_rerun(record.out_dir, previous.info.end_time / 1000 if previous else None)
        params = run_record.flatten(record.recipe)
        changed = run_record.changes(previous.data.params, params) if previous else None
        name = f"{experiment} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        run_id = tracking.log_workflow_run(client=client, experiment=experiment_id, record=record,
                                           tags=run_tags(record, reran), name=name,
                                           description=describe(changed, reran))
        runs = tracking.workflow_runs(client, [experiment_id])
    mark = {"status": "logged", "uri": uri, "experiment": experiment, "experiment_id": experiment_id,
            "run_id": run_id, "run_name": name, "stages_rerun": reran,
            "recipe_changes": [list(change) for change in changed] if changed else []}
    return mark, runs


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__, RECIPE_KEYS, WORKFLOW_KEYS)
    parser.add_argument("--files", nargs="+", required=True, help="the run's results (the rule's inputs)")
    parser.add_argument("--recipe", type=json.loads, required=True, help="the whole recipe, as JSON")
    parser.add_argument("--mark", required=True, help="tracking/run.json: what was logged, or why it was not")
    args = parser.parse_args(argv)
    params = args.params
    started = cli.announce("track", {key: params[key] for key in ("uri", "experiment", "log_models")})
    # The rule reruns on the recipe's digest, and passes the recipe itself apart: they must be the same recipe.
    if hashlib.sha256(json.dumps(args.recipe, sort_keys=True).encode()).hexdigest()[:16] != params["recipe_digest"]:
        cli.fail("--recipe is not the recipe whose digest --params holds (recipe_digest)")
    record = RunRecord.from_layout(args.recipe, params, args.files)  # our own results: a problem reading them is an error
    views = Path(args.mark).parent
    try:
        mark, runs = log(record, params["uri"], params["experiment"])
    except Exception as error:  # noqa: BLE001 - whatever the store did, the results stand and the next run retries
        reason = root_cause(error)
        print(f"warning: tracking: this run was not logged to {params['uri']} ({reason}); its results are complete, "
              "and the next run of the workflow tries again", flush=True)
        tracked_runs.write_views(views, params["experiment"], [], problem=reason)
        write_json({"status": "failed", "uri": params["uri"], "experiment": params["experiment"], "error": reason},
                   args.mark)
        cli.finish("track", started)
        return
    tracked_runs.write_views(views, params["experiment"], runs)
    write_json(mark, args.mark)
    print(f"logged run {mark['run_name']!r} ({mark['run_id']}) to experiment {params['experiment']!r} in "
          f"{params['uri']}; stages that ran: {', '.join(mark['stages_rerun']) or 'none'}", flush=True)
    cli.finish("track", started)


if __name__ == "__main__":
    main()
