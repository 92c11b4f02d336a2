"""A user's data is read-only: the workflow reads data_dir and never writes, moves or deletes anything there.

The scenario that once deleted a user's data: their own Kaggle-layout data on disk, then a fresh copy of the
workflow (so its code is newer than their files), then the default recipe - whose `demo:` section builds a data
set - pointed at their folder with `--config data_dir=...`, then again with `--forceall` and `-R demo_data`. Each
must stop before any job runs, naming what to do, with every file under data_dir byte-identical. A recipe without
`demo:` uses the data as it is, and still writes nothing there (the reference run, `micro_run` in conftest.py).
"""
import os
import time

import pytest

from conftest import (CONFIGS, REPO, build_user_data, checksums, copy_workflow, planned_jobs, restored_afterwards,
                      snakemake)

pytestmark = pytest.mark.workflow
IMAGE_STAGES = {"image_stats", "resize", "split", "augmentation_preview", "precompute", "train_head", "finetune",
                "tta", "calibrate", "interpret", "report_tables", "submission"}


@pytest.mark.parametrize("layout_recipe, recipe", [
    ("micro_csv.yaml", None),               # Dog Breed layout, the default recipe (config/demo.yaml)
    ("tiny_folders.yaml", None),            # Dogs vs Cats layout, the default recipe
    ("tiny_folders.yaml", "tiny_folders.yaml"),  # Dogs vs Cats layout, a folder-layout recipe with `demo:`
])
def test_a_demo_recipe_pointed_at_a_users_data_stops_before_any_job_and_changes_nothing(tmp_path, layout_recipe,
                                                                                        recipe):
    data = build_user_data(tmp_path / "my data", CONFIGS / layout_recipe)
    before = checksums(data)
    time.sleep(0.05)
    workflow = copy_workflow(tmp_path / "fresh clone")
    for module in (workflow / "pipeline").rglob("*.py"):  # `touch pipeline/**/*.py`: the code is newer than the data
        os.utime(module)
    out = tmp_path / "out"
    configfiles = [CONFIGS / recipe] if recipe else []
    for extra in ([], ["--forceall"], ["-R", "demo_data"]):
        result = snakemake(workflow, workflow, *extra, "--config", f"data_dir={data}", f"out_dir={out}",
                           configfiles=configfiles)  # run from the clone, as a user would
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-2000:]
        assert "demo builder did not create" in output and "recipe without `demo:`" in output, output[-2000:]
        assert checksums(data) == before, extra
        assert not out.exists(), f"a job ran with {extra}"


def test_a_recipe_without_demo_reads_the_users_data_and_writes_nothing_there(micro_run):
    assert (micro_run.out / "submission.csv").exists()
    assert checksums(micro_run.data) == micro_run.data_checksums


def test_an_image_replaced_in_data_dir_reruns_the_image_stages_and_everything_after(micro_run):
    data, recipe, work = micro_run.data, micro_run.recipe, micro_run.work
    image, other = sorted((data / "train").glob("*.jpg"))[:2]
    with restored_afterwards(image):
        image.write_bytes(other.read_bytes())  # same name, other picture
        jobs = planned_jobs(snakemake(REPO, work, "-n", configfiles=[recipe]).stdout)
    assert set(jobs) - {"all"} == IMAGE_STAGES
    assert "Nothing to be done" in snakemake(REPO, work, "-n", configfiles=[recipe]).stdout
