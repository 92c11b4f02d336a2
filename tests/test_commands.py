"""The commands a person runs by hand, `python -m pipeline.compare`, `python -m pipeline.stages.predict` and the
bundle's predict.py, each run as a user runs it: a bad argument or a damaged file is one line on stderr naming it and a
non-zero status, never a traceback; --debug (or LESSON2_DEBUG=1) shows the traceback instead. Cheap inputs only (no
workflow run): the workflow tests hold the cases that need a real store or bundle."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from pipeline import cli
from pipeline.compete import bundle


def run(cwd: Path, *args: str, **environment: str) -> subprocess.CompletedProcess:
    """`python *args` in `cwd` with this checkout's pipeline; LESSON2_DEBUG unset unless given."""
    env = {key: value for key, value in os.environ.items() if key not in (cli.DEBUG, "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**env, "PYTHONPATH": str(REPO), **environment})


def one_line(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """The one stderr line of a command that stopped, after checking it stopped with `status` and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def shows_traceback(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 1 and "Traceback (most recent call last)" in result.stderr


# ------------------------------------------------------------------------------------------- python -m pipeline.compare

def text_file(folder: Path) -> Path:
    (folder / "notes.txt").write_text("not a database\n")
    return folder / "notes.txt"


def empty_file(folder: Path) -> Path:
    (folder / "empty.db").write_bytes(b"")
    return folder / "empty.db"


def a_folder(folder: Path) -> Path:
    (folder / "runs.db").mkdir()
    return folder / "runs.db"


def another_programs_database(folder: Path) -> Path:
    with sqlite3.connect(folder / "other.db") as database:
        database.execute("CREATE TABLE notes (text)")
    return folder / "other.db"


@pytest.mark.parametrize("make, said", [
    (text_file, "cannot be read as a SQLite database (file is not a database)"),
    (empty_file, "is an empty file without MLflow's tables: not a tracking store"),
    (a_folder, "is a folder, not a SQLite database file"),
    (another_programs_database, "is a SQLite database without MLflow's tables: not a tracking store"),
])
def test_compare_on_a_file_that_is_not_a_store_says_so_in_one_line_and_leaves_it_as_it_was(tmp_path, make, said):
    store = make(tmp_path)
    before = store.read_bytes() if store.is_file() else None
    line = one_line(run(tmp_path, "-m", "pipeline.compare", "--tracking-uri", f"sqlite:///{store.name}"))
    assert line.startswith(f"error: --tracking-uri sqlite:///{store.name}: {store.name} {said}"), line
    # Unchanged: MLflow, handed the empty file or the other program's database, wrote its tables into it.
    assert (store.read_bytes() if store.is_file() else None) == before


def test_compare_refuses_an_in_memory_store_named_by_the_environment(tmp_path):
    line = one_line(run(tmp_path, "-m", "pipeline.compare", MLFLOW_TRACKING_URI="sqlite:///:memory:"))
    assert line.startswith("error: MLFLOW_TRACKING_URI: 'sqlite:///:memory:' is an in-memory database")


def test_compare_refuses_a_leaderboard_score_that_is_not_a_number_in_one_line(tmp_path):
    line = one_line(run(tmp_path, "-m", "pipeline.compare", "--lb", "nan"), status=2)
    assert line == "error: argument --lb: 'nan' is not a finite number (--help lists the arguments)"


@pytest.mark.parametrize("flags, environment", [(["--debug"], {}), ([], {cli.DEBUG: "1"})], ids=["--debug", cli.DEBUG])
def test_compare_shows_the_traceback_when_asked(tmp_path, flags, environment):
    uri = f"sqlite:///{text_file(tmp_path).name}"
    result = run(tmp_path, "-m", "pipeline.compare", "--tracking-uri", uri, *flags, **environment)
    assert shows_traceback(result) and result.stderr.strip().splitlines()[-1].startswith("CompareError: --tracking-uri")


# ---------------------------------------------------------------------------------- python -m pipeline.stages.predict

def test_predict_with_a_zero_byte_checkpoint_is_one_line_naming_it_and_with_debug_its_traceback(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "photo.jpg").write_bytes(b"")
    arguments = ["-m", "pipeline.stages.predict", "--checkpoint", "model.pt", "photo.jpg"]
    line = one_line(run(tmp_path, *arguments))
    assert line.startswith("error: checkpoint model.pt cannot be read (truncated, or not a model.pt the pipeline")
    assert shows_traceback(run(tmp_path, *arguments, "--debug"))


# ------------------------------------------------------------------------------------------- the bundle's predict.py

@pytest.fixture
def fake_bundle(tmp_path) -> tuple[Path, Path]:
    """A bundle as `snakemake package` lays it out, its one model garbage with the right checksum (what a bundle
    copied over a bad disk, then re-hashed by hand, would hold), beside a test folder of one image."""
    folder = tmp_path / "bundle"
    (folder / "models").mkdir(parents=True)
    (folder / "predict.py").write_text(bundle.predict_script())
    model = folder / "models" / "model.onnx"
    model.write_bytes(b"not an ONNX model")
    manifest = {"bundle_version": 1, "classes": ["a", "b"], "submission": {}, "test_images": {"max_pixels": 10 ** 6},
                "members": [], "blend": None, "calibration": {},
                "models": {"model": {"file": "models/model.onnx", "sha256": hashlib.sha256(model.read_bytes())
                                     .hexdigest()}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "1.jpg").write_bytes(b"")
    return folder, tmp_path / "test"


def predict_py(bundle_folder: Path, *args: str, **environment: str) -> subprocess.CompletedProcess:
    return run(bundle_folder.parent, str(bundle_folder / "predict.py"), *args, "--threads", "1", "--workers", "1",
               **environment)


def not_json(folder: Path) -> str:
    (folder / "manifest.json").write_text('{"bundle_version": 1,')
    return "manifest.json: cannot read the bundle's manifest (JSONDecodeError"


def not_a_manifest(folder: Path) -> str:
    (folder / "manifest.json").write_text("[1, 2]")
    return "manifest.json: not a bundle's manifest (no bundle_version, classes"


def garbage_model(folder: Path) -> str:
    return "models/model.onnx: ONNX Runtime cannot load this model ([ONNXRuntimeError] : 7 : INVALID_PROTOBUF"


@pytest.mark.parametrize("spoil", [not_json, not_a_manifest, garbage_model])
def test_the_bundles_predict_py_on_a_damaged_bundle_is_one_line_naming_the_file(fake_bundle, spoil):
    folder, test_dir = fake_bundle
    named = spoil(folder)
    line = one_line(predict_py(folder, str(test_dir), "--out", "s.csv"))
    assert line.startswith(f"error: {folder / named}") and not (folder.parent / "s.csv").exists(), line


@pytest.mark.parametrize("arguments, said", [
    (["test/1.jpg"], "error: test/1.jpg: not a folder (TEST_DIR is the folder of test images)"),
    (["test", "--out", "test"], "error: --out test is a folder; name the submission file to write"),
    (["test", "--sample", "missing.csv"], "error: missing.csv: cannot read the sample submission"),
])
def test_the_bundles_predict_py_names_a_path_that_cannot_work_before_reading_the_bundle(fake_bundle, arguments, said):
    folder, _ = fake_bundle
    (folder / "manifest.json").unlink()  # so a check that came after loading the bundle would name the manifest
    line = one_line(predict_py(folder, *arguments))
    assert line.startswith(said), line


def test_the_bundles_predict_py_refuses_a_bad_number_in_one_line_and_shows_tracebacks_when_asked(fake_bundle):
    folder, test_dir = fake_bundle
    line = one_line(predict_py(folder, str(test_dir), "--batch-size", "abc"), status=2)
    assert line == "error: argument --batch-size: 'abc' is not a whole number (--help lists the arguments)"
    assert shows_traceback(predict_py(folder, str(test_dir), "--out", "s.csv", "--debug"))
    assert shows_traceback(predict_py(folder, str(test_dir), "--out", "s.csv", **{cli.DEBUG: "1"}))


# ---------------------------------------------------------------------------------------- the shared one-line errors

class Surprise(Exception):
    pass


@pytest.mark.parametrize("raised, said", [
    (Surprise("a\nbroken  thing"), "error: internal error: Surprise: a broken thing; rerun with --debug for the "
                                    "traceback"),
    (FileNotFoundError(2, "No such file or directory", "runs.db"),
     "error: [Errno 2] No such file or directory: 'runs.db'"),
    (LookupError("no run 'x'"), "error: no run 'x'"),
])
def test_an_error_is_one_line_an_unexpected_one_called_internal(capsys, monkeypatch, raised, said):
    monkeypatch.delenv(cli.DEBUG, raising=False)
    with pytest.raises(SystemExit) as stopped, cli.one_line_errors(False, expected=(LookupError,)):
        raise raised
    assert stopped.value.code == 1 and capsys.readouterr().err == said + "\n"


@pytest.mark.parametrize("flag, variable", [(True, None), (False, "1"), (False, "yes")])
def test_debug_lets_the_exception_through(monkeypatch, flag, variable):
    monkeypatch.delenv(cli.DEBUG, raising=False)
    if variable is not None:
        monkeypatch.setenv(cli.DEBUG, variable)
    with pytest.raises(Surprise), cli.one_line_errors(flag):
        raise Surprise("shown whole")


def test_debug_0_is_off(monkeypatch, capsys):
    monkeypatch.setenv(cli.DEBUG, "0")
    with pytest.raises(SystemExit), cli.one_line_errors(False):
        raise Surprise("kept to one line")
    assert "internal error: Surprise" in capsys.readouterr().err
