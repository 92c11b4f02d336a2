"""Several members in one workflow, end to end: two members of the K-fold test recipe on the same 2 folds, their
blend, a pseudo-label round and the blend with its students (tests/configs/blend_csv.yaml, pseudo_csv.yaml), then
the rerun contract with dry runs. The blend's and the pseudo-label stage's own logic have unit tests
(tests/test_blend.py, tests/test_pseudo.py); these check what the workflow wires together."""
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

import report_browser
from conftest import CONFIGS, REPO, planned_jobs, snakemake, write_override
from pipeline.compete.blending import combine

pytestmark = pytest.mark.workflow

RECIPES = [CONFIGS / "kfold_csv.yaml", CONFIGS / "blend_csv.yaml", CONFIGS / "pseudo_csv.yaml"]
MEMBERS, STUDENTS, FOLDS = ["a", "b"], "a-pseudo", [0, 1]
MODEL_CHAIN = {"precompute", "train_head", "finetune", "tta"}


def read(path):
    return json.loads(path.read_text())


def planned_outputs(dry_run_output: str) -> list[str]:
    """Every output path of the jobs a dry run plans."""
    return [path for line in dry_run_output.splitlines() if line.strip().startswith("output:")
            for path in line.split("output:", 1)[1].split(", ")]


def job_graph(dot: str):
    """The jobs of a `--dag` graph ({node: label}) and a function giving the members whose fold splits a job waits
    on, however indirectly (`--dag` names the member only on fold_split, where the wildcard first appears)."""
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]*)"', dot, re.M))
    needs = {}
    for upstream, downstream in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M):
        needs.setdefault(downstream, set()).add(upstream)

    def members_upstream(node, seen=None):
        seen = set() if seen is None else seen
        found = set(re.findall(r"member: (\w+)", labels[node]))
        for upstream in needs.get(node, ()):
            if upstream not in seen:
                seen.add(upstream)
                found |= members_upstream(upstream, seen)
        return found

    return labels, members_upstream


def test_every_member_trains_on_the_same_folds_and_the_shared_stages_ran_once(blend_run):
    out = blend_run / "out"
    assert sorted(path.name for path in (out / "members").iterdir()) == sorted([*MEMBERS, STUDENTS])
    assert [path.name for path in (out / "resized").iterdir()] == ["36"]  # one resize cache for everyone
    for fold in FOLDS:
        splits = [(out / "members" / member / "folds" / str(fold) / "split.csv").read_bytes() for member in MEMBERS]
        assert splits[0] == splits[1]
        for member in MEMBERS:
            assert (out / "members" / member / "folds" / str(fold) / "finetune" / "1_32" / "model.pt").is_file()
    oofs = [pd.read_csv(out / "members" / member / "oof.csv", dtype={"id": str}) for member in MEMBERS]
    assert oofs[0][["id", "fold"]].equals(oofs[1][["id", "fold"]])
    assert not oofs[0].drop(columns=["id", "label", "fold"]).equals(oofs[1].drop(columns=["id", "label", "fold"]))


def test_the_blend_reports_each_member_and_its_cross_fitted_score(blend_run):
    out = blend_run / "out"
    weights = read(out / "blend" / "weights.json")
    assert [member["name"] for member in weights["members"]] == MEMBERS
    assert sum(member["weight"] for member in weights["members"]) == pytest.approx(1.0)
    for member in weights["members"]:
        cv = read(out / "members" / member["name"] / "oof" / "cv_metrics.json")
        assert member["oof_logloss"] == pytest.approx(cv["oof_logloss"], abs=1e-9)
    blended = pd.read_csv(out / "blend" / "oof.csv", dtype={"id": str})
    classes = weights["classes"]
    y = blended["label"].map(classes.index)
    assert weights["blend_oof_logloss"] == pytest.approx(log_loss(y, blended[classes].to_numpy(),
                                                                  labels=range(len(classes))), abs=1e-6)
    assert weights["best_member_oof_logloss"] == min(member["oof_logloss"] for member in weights["members"])
    final = read(out / "blend_pseudo" / "weights.json")
    assert [member["name"] for member in final["members"]] == [*MEMBERS, STUDENTS]
    # calibration, the headline figures and the submission are the final blend's
    assert read(out / "cv_metrics.json")["oof_logloss"] == pytest.approx(final["blend_oof_logloss"], abs=1e-9)
    submission = pd.read_csv(out / "submission.csv", dtype={"id": str})
    assert sorted(submission["id"]) == sorted(pd.read_csv(out / "test.csv", dtype={"id": str})["id"])
    assert np.allclose(submission[classes].sum(axis=1), 1.0, atol=1e-4)


def test_fold_ks_pseudo_labels_come_from_fold_ks_teachers_alone(blend_run):
    """The honesty property: a student's pseudo-labels are fold k's members' test predictions, blended with the
    weights fitted without fold k, thresholded; no other fold's model (each saw fold k's validation images) counts."""
    out = blend_run / "out"
    weights = read(out / "blend" / "weights.json")
    test = pd.read_csv(out / "test.csv", dtype={"id": str})
    classes = weights["classes"]
    used_somewhere = False
    for fold in FOLDS:
        teacher = combine(np.stack([np.load(out / "members" / member / "folds" / str(fold) / "tta" / "test_probs.npy")
                                    for member in MEMBERS]), weights["fold_weights"][str(fold)], weights["space"])
        confident = (teacher.max(1) >= 0.5) & test["usable"].astype(bool).to_numpy()
        expected = pd.DataFrame({"id": test["id"][confident], "label": np.array(classes)[teacher.argmax(1)][confident]})
        split = pd.read_csv(out / "members" / STUDENTS / "folds" / str(fold) / "split.csv", dtype={"id": str})
        pseudo = split[split["pseudo"]]
        assert pseudo[["id", "label"]].reset_index(drop=True).equals(expected.reset_index(drop=True)), fold
        assert not pseudo["is_valid"].any()
        real = split[~split["pseudo"]].drop(columns="pseudo").reset_index(drop=True)
        member_split = pd.read_csv(out / "members" / "a" / "folds" / str(fold) / "split.csv", dtype={"id": str})
        assert real.equals(member_split), "the student's real rows are its member's fold split, unchanged"
        report = read(out / "members" / STUDENTS / "folds" / str(fold) / "pseudo_labels.json")
        assert report["n_used"] == len(pseudo) and report["threshold"] == 0.5
        used_somewhere |= len(pseudo) > 0
    assert used_somewhere, "no test image reached the threshold: the test would check nothing"


def test_pseudo_labelled_images_never_reach_an_out_of_fold_score_or_the_calibration(blend_run):
    out = blend_run / "out"
    labelled = pd.read_csv(out / "split.csv", dtype={"id": str})
    test_ids = set(pd.read_csv(out / "test.csv", dtype={"id": str})["id"])
    for rows in (out / "members" / STUDENTS / "oof.csv", out / "blend_pseudo" / "oof.csv"):
        ids = pd.read_csv(rows, dtype={"id": str})["id"]
        assert not set(ids) & test_ids and set(ids) <= set(labelled["id"]), rows
    assert read(out / "calibration" / "calibration.json")["n_rows"] == int(labelled["fold"].isin(FOLDS).sum())


def test_the_report_shows_each_blends_weights_and_correlation_in_a_browser(blend_run, tmp_path):
    page = tmp_path / "report.html"
    result = snakemake(REPO, blend_run, "--report", str(page), configfiles=RECIPES)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    if report_browser.chromium() is None:
        if os.environ.get("LESSON2_REQUIRE_BROWSER"):
            pytest.fail("Chromium could not be installed for the report check")
        pytest.skip("no Chromium to look at the report with (apt-get install chromium)")
    for blend in ("blend", "blend_pseudo"):
        dom = report_browser.render(page, ["3. Results", blend])
        assert 'data-tour="done"' in dom, blend
        assert f">out/{blend}/weights.json<" in dom and f">out/{blend}/correlation.png<" in dom, blend
    dom = report_browser.render(page, ["3. Results", "tables", "view:out/report/tables.html"])
    assert 'data-tour="done"' in dom and "<iframe" in dom


def test_nothing_reruns_when_nothing_changed(blend_run):
    result = snakemake(REPO, blend_run, "-n", configfiles=RECIPES)
    assert result.returncode == 0 and planned_jobs(result.stdout) == {}, result.stdout[-3000:]


def test_editing_one_member_reruns_its_chain_and_the_cross_member_stages_only(blend_run, tmp_path):
    edit = write_override(tmp_path / "edit.yaml", members={"b": {"seed": 8}})
    result = snakemake(REPO, blend_run, "-n", configfiles=[*RECIPES, edit])
    jobs, outputs = planned_jobs(result.stdout), planned_outputs(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:]
    assert not [path for path in outputs if "/members/a/" in path], "member a's chain must stay as it is"
    assert {rule: jobs.get(rule) for rule in MODEL_CHAIN} == {"precompute": 4, "train_head": 4, "finetune": 4,
                                                             "tta": 4}  # b's 2 folds, and the students' (teacher)
    assert jobs["oof"] == 2 and jobs["blend"] == 2 and jobs["pseudo_labels"] == 2
    assert "fold_split" not in jobs and "split" not in jobs and "resize" not in jobs
    assert {"calibrate", "submission"} <= set(jobs)
    teacher_a = write_override(tmp_path / "teacher.yaml", pseudo={"teacher": "a"})
    labels, members_upstream = job_graph(snakemake(REPO, blend_run, "--dag", configfiles=[*RECIPES, teacher_a]).stdout)
    pseudo_rounds = [node for node, label in labels.items() if label.startswith("pseudo_labels")]
    assert len(pseudo_rounds) == len(FOLDS) and all(members_upstream(node) == {"a"} for node in pseudo_rounds), \
        "with member a as the teacher, the pseudo-label round waits on a's chain alone: an edit of b leaves it be"

def test_members_that_would_change_the_split_stop_before_anything_runs(tmp_path):
    bad = write_override(tmp_path / "bad.yaml", members={"a": {}, "b": {"split": {"seed": 1}},
                                                         "c": {"images": {"jpeg_quality": 50}}})
    result = snakemake(REPO, tmp_path, configfiles=[CONFIGS / "kfold_csv.yaml", CONFIGS / "blend_csv.yaml", bad])
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "members.b.split: a member cannot change the split" in output
    assert "members.c.images: a member may set only images.shorter_side" in output
    assert "Traceback" not in output and not (tmp_path / "data").exists()


def test_with_gpus_every_members_fold_is_its_own_one_gpu_job_independent_of_the_other_members(tmp_path):
    """What lets `--resources gpu=N` run members and folds side by side: each member's fold chain asks for one GPU
    per job and waits on nothing of another member's until the blend (Snakemake's DAG, as `--dag` gives it)."""
    on_gpus = write_override(tmp_path / "gpu.yaml", device="auto")
    recipes = [*RECIPES[:2], on_gpus]
    result = snakemake(REPO, tmp_path, "-n", "--resources", "gpu=2", configfiles=recipes)
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_jobs(result.stdout)["train_head"] == 4
    labels, members_upstream = job_graph(snakemake(REPO, tmp_path, "--dag", configfiles=recipes).stdout)
    chain_jobs = [node for node, label in labels.items() if label.split("\\n")[0] in MODEL_CHAIN | {"oof"}]
    assert len(chain_jobs) == 2 * (len(MODEL_CHAIN) * len(FOLDS) + 1)
    assert all(len(members_upstream(node)) == 1 for node in chain_jobs), "a member's job waits on another member's"
    blend = next(node for node, label in labels.items() if label.startswith("blend"))
    assert members_upstream(blend) == set(MEMBERS)
    gpu_jobs = [line for line in result.stdout.splitlines() if "gpu=1" in line]
    assert len(gpu_jobs) >= 16  # precompute, train_head, finetune and tta: 2 members x 2 folds each


def test_the_shipped_demo_blend_plans_two_members_and_a_pseudo_label_round_on_three_folds(tmp_path):
    """The one-command blend of config/: 2 members x 3 folds, the students' 3, two blends, one shared resize."""
    shipped = [REPO / "config" / name for name in ("demo.yaml", "demo_kfold.yaml", "demo_blend.yaml")]
    result = snakemake(REPO, tmp_path, "-n", configfiles=shipped)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    assert {rule: jobs.get(rule) for rule in (*MODEL_CHAIN, "fold_split", "oof", "blend", "pseudo_labels",
                                              "resize", "split")} == \
        {"precompute": 9, "train_head": 9, "finetune": 18, "tta": 9, "fold_split": 6, "oof": 3, "blend": 2,
         "pseudo_labels": 3, "resize": 1, "split": 1}
