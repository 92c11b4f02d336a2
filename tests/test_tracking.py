"""Every run remembered and compared: the tracking rule logs a workflow run that changed a result as one MLflow run
(the recipe, tags, headline figures, curves, nested folds and members, files), a no-op rerun logs nothing, a store
that cannot be reached or is locked costs one warning line and a retry, two workflows share one SQLite store, and
`pipeline.compare` shows what changed between two runs and CV against the leaderboard."""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import CONFIGS, REPO, checksums, planned_jobs, snakemake, with_defaults, write_override
from pipeline.workflow import deps
from pipeline.tracking import record as run_record
from pipeline.tracking import store as tracking_store
from pipeline.data.dataset import data_fingerprint
from pipeline.data.demo_folder import BUILT_MARKER, OWNER_MARKER

RECIPE = CONFIGS / "kfold_csv.yaml"
FOLDS = (0, 1, 2)
DEMO_DATA = (OWNER_MARKER, BUILT_MARKER, "labels.csv", "sample_submission.csv", "solution.csv", "train", "test")


# ---------------------------------------------------------------------------------------------------------- unit

def test_the_store_is_the_recipes_then_mlflows_environment_variable_then_mlflow_db_where_snakemake_runs():
    environment = {"MLFLOW_TRACKING_URI": "http://team:5000"}
    assert tracking_store.store_uri("sqlite:///runs.db", environment) == "sqlite:///runs.db"
    assert tracking_store.store_uri(None, environment) == "http://team:5000"
    assert tracking_store.store_uri(None, {}) == "sqlite:///mlflow.db"
    assert tracking_store.store_uri("none", environment) is None
    assert tracking_store.store_uri(None, {"MLFLOW_TRACKING_URI": "none"}) is None


@pytest.mark.parametrize("tracking, environment, message", [
    ({"uri": "htp://team:5000"}, {}, "tracking.uri: 'htp://team:5000' has the unknown scheme 'htp'"),
    ({"uri": "sqlite://"}, {}, "tracking.uri: 'sqlite://' is an in-memory database"),
    ({"uri": "sqlite:///:memory:"}, {}, "tracking.uri: 'sqlite:///:memory:' is an in-memory database"),
    ({"uri": "sqlite:///file::memory:?cache=shared"}, {}, "'sqlite:///file::memory:?cache=shared' is an in-memory"),
    ({"uri": "sqlite:///file:runs?mode=memory&uri=true"}, {}, "?mode=memory&uri=true' is an in-memory database"),
    ({"uri": "http://"}, {}, "tracking.uri: 'http://' names no host"),
    ({"uri": "file:///srv/mlruns"}, {}, "tracking.uri: 'file:///srv/mlruns' is a file store, which MLflow 3 refuses"),
    ({"uri": "mlruns"}, {}, "tracking.uri: 'mlruns' is a file store"),
    ({}, {"MLFLOW_TRACKING_URI": "ftp://x"}, "the environment variable MLFLOW_TRACKING_URI: 'ftp://x' has the unknown"),
    ({"experiment": "  "}, {}, "tracking.experiment: must not be blank"),
], ids=["scheme", "in-memory", ":memory:", "shared memory", "mode=memory", "no host", "file store", "bare path",
        "environment", "blank experiment"])
def test_a_bad_tracking_key_is_named_with_what_to_write(tracking, environment, message):
    recipe = with_defaults({**yaml.safe_load(RECIPE.read_text()), "tracking": tracking})
    assert [problem for problem in tracking_store.tracking_problems(recipe, environment) if message in problem]


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:////abs/runs.db", "sqlite:///file:runs.db?uri=true",
                                 "sqlite:///memory.db", "http://team:5000", "https://mlflow.example.org", "none",
                                 "postgresql://user@db/mlflow", "databricks"])
def test_the_stores_mlflow_logs_to_pass(uri):
    recipe = with_defaults({**yaml.safe_load(RECIPE.read_text()), "tracking": {"uri": uri}})
    assert tracking_store.tracking_problems(recipe, {}) == []


@pytest.mark.parametrize("uri", ["file:///srv/mlruns", "mlruns"])
def test_a_file_store_passes_where_mlflow_is_told_to_allow_it(uri):
    recipe = with_defaults({**yaml.safe_load(RECIPE.read_text()), "tracking": {"uri": uri}})
    assert tracking_store.tracking_problems(recipe, {"MLFLOW_ALLOW_FILE_STORE": "true"}) == []


def test_the_recipe_flattens_to_dotted_params_and_a_change_reads_old_then_new():
    recipe = {"tta": {"n_aug": 4}, "finetune": [{"size": 72, "fits": [{"lr": [1.0e-3, 1.0e-2], "n_cycle": 2}]}],
              "model": {"arch": "resnet34", "weights": None}, "members": {}}
    flat = run_record.flatten(recipe)
    assert flat == {"tta.n_aug": "4", "finetune.0.size": "72", "finetune.0.fits.0.lr": "[0.001, 0.01]",
                    "finetune.0.fits.0.n_cycle": "2", "model.arch": "resnet34", "model.weights": "null",
                    "members": "{}"}
    edited = run_record.flatten({**recipe, "tta": {"n_aug": 2}, "seed": 7})
    assert run_record.changes(flat, edited) == [("tta.n_aug", "4", "2"), ("seed", None, "7")]


def test_curves_have_a_point_per_epoch_for_each_phase_and_column(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("phase,fit,epoch,train_loss,valid_loss,accuracy,lr,seconds\n"
                   "precomputed,0,0,0.9,0.8,0.5,0.01,1\nprecomputed,1,0,0.7,0.6,0.6,0.01,1\n"
                   "augmented,0,0,0.5,0.4,0.7,0.01,1\n")
    points = run_record.curves(log, "head")
    assert ("head_precomputed/train_loss", 0.7, 1) in points and ("head_augmented/accuracy", 0.7, 0) in points
    assert len(points) == 3 * 3
    sized = tmp_path / "size.csv"
    sized.write_text("phase,fit,epoch,train_loss,valid_loss,accuracy,lr,seconds\nsize 32,0,0,0.5,0.4,0.7,0.01,1\n")
    assert [key for key, _, _ in run_record.curves(sized, "finetune_1_32")] == \
        ["finetune_1_32/train_loss", "finetune_1_32/valid_loss", "finetune_1_32/accuracy"]


def test_the_stages_that_reran_are_the_logs_written_since_the_last_logged_run(tmp_path):
    for index, log in enumerate(["logs/split.log", "folds/0/logs/tta.log", "folds/1/logs/tta.log", "logs/oof.log",
                                 "logs/track.log"]):
        (tmp_path / log).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / log).write_text("")
        os.utime(tmp_path / log, (1000 + index, 1000 + index))
    assert run_record.stages_rerun(tmp_path, None) == ["split", "tta x2", "oof"]
    assert run_record.stages_rerun(tmp_path, 1000.5) == ["tta x2", "oof"]


def test_only_a_failed_loggings_mark_is_removed(tmp_path):
    mark = tmp_path / "run.json"
    mark.write_text(json.dumps({"status": "logged", "run_id": "abc"}))
    tracking_store.forget_failed_attempt(mark)
    assert mark.exists()
    mark.write_text(json.dumps({"status": "failed", "error": "ConnectionRefusedError"}))
    tracking_store.forget_failed_attempt(mark)
    assert not mark.exists()


def test_no_stage_but_track_imports_mlflow_nor_does_the_snakefile():
    stages = sorted(path.stem for path in (REPO / "pipeline" / "stages").glob("[!_]*.py"))
    mlflow_users = [stage for stage in stages for path in deps.module_files(f"pipeline.stages.{stage}")
                    if "import mlflow" in Path(path).read_text() or "from mlflow" in Path(path).read_text()]
    assert sorted(set(mlflow_users)) == ["track"]
    for planning in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk"), REPO / "pipeline" / "tracking" / "store.py"]:
        assert "mlflow import" not in planning.read_text() and "import mlflow" not in planning.read_text(), planning
    imported = subprocess.run([sys.executable, "-c", "import sys, pipeline.stages.track, pipeline.tracking.runs; "
                               "print('mlflow' in sys.modules)"], capture_output=True, text=True, cwd=REPO)
    assert imported.stdout.strip() == "False", imported.stderr  # only logging itself pays MLflow's import


# ------------------------------------------------------------------------------------------------- the workflow

def client(work: Path, uri: str = "sqlite:///mlflow.db"):
    """A client on a store as the workflow wrote it (a relative SQLite path is relative to its working directory)."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{work / uri.removeprefix('sqlite:///')}"
    return MlflowClient(uri)


def runs_of(work: Path, kind: str = "workflow", uri: str = "sqlite:///mlflow.db") -> list:
    store = client(work, uri)
    experiments = [experiment.experiment_id for experiment in store.search_experiments()]
    return store.search_runs(experiments, f"tags.run_kind = '{kind}'", order_by=["attributes.start_time ASC"])


# Files no stage ever rewrites in place (each is written under a temporary name and renamed): a copied run may share
# them with its original. Logs, benchmarks, Snakemake's records and the store are written in place: those are copied.
SHAREABLE = (".npy", ".pt", ".jpg")


def copy_or_link(source: str, destination: str) -> None:
    if source.endswith(SHAREABLE):
        os.link(source, destination)
    else:
        shutil.copy2(source, destination)


def copied_run(kfold_run: Path, destination: Path) -> Path:
    """A finished run's working directory, copied with its store, mtimes and Snakemake records (its caches, arrays
    and weights hard-linked: a quarter of a GB per copy otherwise)."""
    shutil.copytree(kfold_run, destination, symlinks=True, copy_function=copy_or_link)
    return destination


def compare(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.compare", *args], capture_output=True, text=True,
                          cwd=work, env={**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(REPO)},
                          timeout=300)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.workflow
def test_a_k_fold_run_is_logged_whole_to_mlflow_db_where_snakemake_ran(kfold_run):
    (run,) = runs_of(kfold_run)
    store = client(kfold_run)
    recipe = with_defaults(yaml.safe_load(RECIPE.read_text()))
    assert run.data.params == run_record.flatten(recipe)
    tags = run.data.tags
    assert tags["out_dir"] == str(kfold_run / "out") and tags["data_fingerprint"] == data_fingerprint(kfold_run / "data")
    assert sorted(path.name for path in (kfold_run / "data").iterdir()) == sorted(DEMO_DATA), \
        "the tracking rule reads data_dir (its fingerprint), never writes there; only the demo builder does"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == (head or "unknown") and tags["git_dirty"] in ("true", "false", "unknown")
    assert tags["stages_rerun"].startswith("demo_data") and "tta x3" in tags["stages_rerun"]
    calibration = json.loads((kfold_run / "out" / "calibration" / "calibration.json").read_text())
    for figure in run_record.HEADLINE:
        assert run.data.metrics[f"oof_{figure}"] == pytest.approx(calibration[figure]), figure
    cv = json.loads((kfold_run / "out" / "cv_metrics.json").read_text())
    assert run.data.metrics["fold_valid_logloss_std"] == pytest.approx(cv["fold_valid_logloss_std"])
    files = {item.path for item in store.list_artifacts(run.info.run_id)}
    assert {"submission.csv", "cv_metrics.json", "calibration", "interpret", "plots"} <= files
    assert {item.path for item in store.list_artifacts(run.info.run_id, "calibration")} >= \
        {"calibration/calibration.json", "calibration/reliability.png"}
    folds = runs_of(kfold_run, "fold")
    assert sorted(fold.data.tags["fold"] for fold in folds) == ["0", "1", "2"]
    for fold in folds:
        assert fold.data.tags["mlflow.parentRunId"] == run.info.run_id and fold.info.status == "FINISHED"
        folder = kfold_run / "out" / "folds" / fold.data.tags["fold"]
        log = pd.read_csv(folder / "finetune" / "1_32" / "log.csv")
        history = store.get_metric_history(fold.info.run_id, "finetune_1_32/valid_loss")
        assert [(point.step, point.value) for point in sorted(history, key=lambda p: p.step)] == \
            pytest.approx(list(enumerate(log["valid_loss"])))
        assert fold.data.metrics["valid_logloss"] == pytest.approx(json.loads((folder / "metrics.json").read_text())
                                                                   ["valid_logloss"])
        fold_files = {item.path for item in store.list_artifacts(fold.info.run_id, "finetune/1_32")}
        assert "finetune/1_32/curves.png" in fold_files and not [f for f in fold_files if f.endswith(".pt")]
    assert json.loads((kfold_run / "out" / "tracking" / "run.json").read_text())["run_id"] == run.info.run_id


@pytest.mark.workflow
def test_a_blends_members_are_nested_runs_with_their_folds_and_the_blend_weights_are_metrics(blend_run):
    (run,) = runs_of(blend_run)
    members = {member.info.run_name: member for member in runs_of(blend_run, "member")}
    assert set(members) == {"a", "b", "a-pseudo"}
    assert all(member.data.tags["mlflow.parentRunId"] == run.info.run_id for member in members.values())
    assert members["b"].data.params == run_record.flatten(yaml.safe_load((CONFIGS / "blend_csv.yaml").read_text())
                                                          ["members"]["b"])
    folds = runs_of(blend_run, "fold")
    assert sorted((fold.data.tags["member"], fold.data.tags["fold"]) for fold in folds) == \
        [(member, fold) for member in ("a", "a-pseudo", "b") for fold in ("0", "1")]
    assert all(fold.data.tags["mlflow.parentRunId"] == members[fold.data.tags["member"]].info.run_id for fold in folds)
    students = [fold for fold in folds if fold.data.tags["member"] == "a-pseudo"]
    assert all("pseudo_n_used" in fold.data.metrics for fold in students)
    for blend in ("blend", "blend_pseudo"):
        weights = json.loads((blend_run / "out" / blend / "weights.json").read_text())
        for member in weights["members"]:
            assert run.data.metrics[f"{blend}.weight.{member['name']}"] == pytest.approx(member["weight"])
        assert run.data.metrics[f"{blend}.blend_oof_logloss"] == pytest.approx(weights["blend_oof_logloss"])


@pytest.fixture(scope="module")
def edited_run(kfold_run, tmp_path_factory):
    """The K-fold run copied into a new out_dir with a store of its own (its run logged again, tracking alone), then
    rerun after an edit of TTA: two MLflow runs of one out_dir."""
    work = copied_run(kfold_run, tmp_path_factory.mktemp("edited_run") / "work")
    (work / "mlflow.db").unlink()
    shutil.rmtree(work / "mlruns")
    logged = snakemake(REPO, work, "-R", "track", configfiles=[RECIPE])
    assert logged.returncode == 0 and "Job stats" in logged.stderr and "tta" not in planned_jobs(logged.stderr), \
        logged.stderr[-3000:]
    edit = write_override(work.parent / "edit.yaml", tta={"n_aug": 1})
    result = snakemake(REPO, work, configfiles=[RECIPE, edit])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, edit


@pytest.mark.workflow
def test_an_edit_logs_one_new_run_and_a_no_op_rerun_logs_none(edited_run):
    work, edit = edited_run
    first, second = runs_of(work)
    assert second.data.params["tta.n_aug"] == "1" and first.data.params["tta.n_aug"] == "2"
    assert second.data.tags["stages_rerun"].startswith("tta x3, oof, calibrate")
    assert "`tta.n_aug`: 2 → 1" in second.data.tags["mlflow.note.content"]
    again = snakemake(REPO, work, configfiles=[RECIPE, edit])
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stderr[-2000:]
    assert len(runs_of(work)) == 2


@pytest.mark.workflow
def test_compare_prints_the_changed_key_and_both_runs_headline_figures_with_deltas(edited_run):
    work, _ = edited_run
    first, second = runs_of(work)
    shown = compare(work)
    assert shown.returncode == 0, shown.stderr
    assert "tta.n_aug  2 → 1" in shown.stdout
    tta_row = next(line for line in shown.stdout.splitlines() if line.strip().startswith("log loss, TTA"))
    old, new = first.data.metrics["oof_logloss_tta"], second.data.metrics["oof_logloss_tta"]
    assert tta_row.split()[-3:] == [f"{old:.4f}", f"{new:.4f}", f"{new - old:+.4f}"]
    assert "headline figures (out of fold)" in shown.stdout
    by_id = compare(work, first.info.run_id[:8], str(work / "out"), "--markdown")
    assert by_id.returncode == 0 and "| tta.n_aug | 2 | 1 |" in by_id.stdout, by_id.stdout + by_id.stderr
    missing = compare(work, "no-such-run", "neither")
    assert missing.returncode == 1 and "no run 'no-such-run'" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.workflow
def test_leaderboard_scores_show_beside_cv_and_three_of_them_draw_cv_against_lb(edited_run, tmp_path):
    work = copied_run(edited_run[0], tmp_path / "work")
    first, second = runs_of(work)
    assert compare(work, "--lb", "0.45", first.info.run_id).returncode == 0
    recorded = compare(work, "--lb", "0.41")  # the last run by default
    assert recorded.returncode == 0, recorded.stderr
    assert client(work).get_run(second.info.run_id).data.metrics["leaderboard"] == 0.41
    board = recorded.stdout.split("CV against the leaderboard:")[1].splitlines()
    assert f"{second.data.metrics['oof_logloss_calibrated']:.4f}" in next(line for line in board
                                                                          if second.info.run_id[:8] in line)
    views = Path(second.data.tags["out_dir"]) / "tracking"  # the copied runs name the edited run's out_dir
    page = (views / "runs.html").read_text()
    assert "0.4100" in page and "0.4500" in page and "2 of the 3 runs" in page
    assert not (views / "cv_vs_lb.png").exists()
    result = snakemake(REPO, work, "-R", "track", configfiles=[RECIPE, edited_run[1]])  # a third run
    assert result.returncode == 0, result.stderr[-2000:]
    assert compare(work, "--lb", "0.40").returncode == 0
    plot = work / "out" / "tracking" / "cv_vs_lb.png"
    assert plot.read_bytes()[:4] == b"\x89PNG" and "data:image/png;base64" in plot.with_name("runs.html").read_text()
    third = runs_of(work)[-1]
    assert "cv_vs_lb.png" in {item.path for item in client(work).list_artifacts(third.info.run_id)}


def warnings_of(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("warning: tracking")]


@pytest.mark.workflow
def test_an_unreachable_server_or_a_locked_store_costs_one_warning_line_and_the_next_run_logs(kfold_run, tmp_path):
    work = copied_run(kfold_run, tmp_path / "work")
    before, data_before = (work / "out" / "submission.csv").read_bytes(), checksums(work / "data")
    unreachable = write_override(tmp_path / "server.yaml", tracking={"uri": f"http://127.0.0.1:{free_port()}"})
    result = snakemake(REPO, work, configfiles=[RECIPE, unreachable])
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert len(warnings_of(result)) == 1 and "Connection refused" in warnings_of(result)[0], result.stdout[-3000:]
    assert (work / "out" / "submission.csv").read_bytes() == before  # only the tracking rule ran
    assert json.loads((work / "out" / "tracking" / "run.json").read_text())["status"] == "failed"
    planned = planned_jobs(snakemake(REPO, work, "-n", configfiles=[RECIPE, unreachable]).stdout)
    assert planned == {"track": 1, "all": 1}, "a failed logging is not done: the next run tries again"

    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    locked = write_override(tmp_path / "locked.yaml", tracking={"uri": f"sqlite:///{store}"})
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program in the middle of writing: SQLite refuses every other access
    try:
        result = snakemake(REPO, work, configfiles=[RECIPE, locked])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 0 and len(warnings_of(result)) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "database is locked" in warnings_of(result)[0]
    retried = snakemake(REPO, work, configfiles=[RECIPE, locked])  # Snakemake's own lines go to stderr
    assert retried.returncode == 0 and planned_jobs(retried.stderr) == {"track": 1, "all": 1}, retried.stderr[-3000:]
    assert len(runs_of(work, uri=f"sqlite:///{store}")) == 1 and not warnings_of(retried)
    assert checksums(work / "data") == data_before  # the tracking rule reads data_dir (its fingerprint), never writes


@pytest.mark.workflow
def test_two_workflows_logging_into_one_new_sqlite_store_at_once_are_both_recorded_whole(kfold_run, tmp_path):
    shared = write_override(tmp_path / "shared.yaml",
                            tracking={"uri": f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}", "experiment": "team"})
    works = [copied_run(kfold_run, tmp_path / name) for name in ("first", "second")]
    from conftest import snakemake_command

    runs = [subprocess.Popen(snakemake_command(REPO, work, configfiles=[RECIPE, shared]), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
            for work in works]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert not [output for output in outputs if "warning: tracking" in output], outputs
    uri = f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}"
    logged = runs_of(tmp_path, uri=uri)
    assert sorted(run.data.tags["out_dir"] for run in logged) == sorted(str(work / "out") for work in works)
    reference = runs_of(kfold_run)[0]
    folds = runs_of(tmp_path, "fold", uri=uri)
    for run in logged:
        assert run.data.params.keys() == reference.data.params.keys()
        assert run.data.metrics.keys() == reference.data.metrics.keys()
        assert len([fold for fold in folds if fold.data.tags["mlflow.parentRunId"] == run.info.run_id]) == 3


@pytest.mark.workflow
def test_bad_tracking_keys_stop_the_workflow_before_any_job(tmp_path):
    bad = write_override(tmp_path / "bad.yaml", tracking={"uri": "htp://team:5000", "log_model": True})
    result = snakemake(REPO, tmp_path, configfiles=[RECIPE, bad])
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "tracking: unknown key 'log_model' (did you mean 'log_models'?)" in output
    fixed_key = write_override(tmp_path / "bad.yaml", tracking={"uri": "htp://team:5000"})
    result = snakemake(REPO, tmp_path, configfiles=[RECIPE, fixed_key])
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "tracking.uri: 'htp://team:5000' has the unknown scheme 'htp'" in output
    assert "Traceback" not in output and not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
    from_environment = snakemake(REPO, tmp_path, configfiles=[RECIPE], env={"MLFLOW_TRACKING_URI": "sqlite://"})
    assert from_environment.returncode != 0 and \
        "the environment variable MLFLOW_TRACKING_URI: 'sqlite://' is an in-memory database" in from_environment.stderr


@pytest.mark.workflow
def test_tracking_none_plans_no_tracking_rule(kfold_run, tmp_path):
    off = write_override(tmp_path / "off.yaml", tracking={"uri": "none"})
    result = snakemake(REPO, kfold_run, "-n", configfiles=[RECIPE, off])
    assert result.returncode == 0 and planned_jobs(result.stdout) == {}, result.stdout[-2000:]


def shown(value: float) -> str:
    """A metric as the MLflow UI prints it: three decimals at most, no trailing zeros."""
    return f"{round(value, 3):g}"


@pytest.fixture
def mlflow_ui(edited_run, tmp_path):
    """`mlflow server` over the edited run's store (the K-fold run and its rerun), on a free localhost port."""
    work, _ = edited_run
    port = free_port()
    log = open(tmp_path / "mlflow_server.log", "w")
    server = subprocess.Popen([Path(sys.executable).with_name("mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{work / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow_server.log').read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}", runs_of(work)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.workflow
def test_the_mlflow_ui_lists_both_runs_and_compares_their_out_of_fold_log_loss(mlflow_ui, tmp_path):
    import report_browser

    if report_browser.chromium() is None:
        if os.environ.get("LESSON2_REQUIRE_BROWSER"):
            pytest.fail("Chromium could not be installed for the MLflow UI check")
        pytest.skip("no Chromium to look at the MLflow UI with (apt-get install chromium)")
    url, (first, second) = mlflow_ui
    experiment = first.info.experiment_id
    listed = report_browser.look(f"{url}/#/experiments/{experiment}/runs", 15000, tmp_path / "experiment.png",
                                 window="1600,1000")
    assert first.info.run_name in listed and second.info.run_name in listed
    ids = ",".join(f"%22{run.info.run_id}%22" for run in (first, second))
    compared = report_browser.look(f"{url}/#/compare-runs?runs=[{ids}]&experiments=[%22{experiment}%22]", 15000,
                                   tmp_path / "compare.png", window="1600,6000")
    assert first.info.run_name in compared and second.info.run_name in compared
    assert ">oof_logloss_tta<" in compared and ">tta.n_aug<" in compared, "the compare view lists the metric"
    for run in (first, second):
        assert f">{shown(run.data.metrics['oof_logloss_tta'])}<" in compared, run.info.run_name
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
