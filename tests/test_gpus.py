"""One GPU per job on a box with several (pipeline/compute/gpus.py), on CPU with a faked device count: concurrent jobs get
different GPUs, a GPU comes free when its job ends however it ends, and a scheduler's choice is left alone."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import CONFIGS, REPO, snakemake, write_override

CLAIM = textwrap.dedent("""
    import sys, time
    from unittest import mock
    device_count, hold, how = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if how == "runtime":  # what a torch stage does first, on a box with device_count GPUs (faked: there are none)
        import torch
        from pipeline.compute import runtime
        with mock.patch("torch.cuda.is_available", return_value=True), \\
                mock.patch("torch.cuda.device_count", return_value=device_count), mock.patch("torch.cuda.set_device"):
            index = runtime.setup(threads=1, seed=42, device="auto").index
    else:  # the allocator runtime.setup calls, without importing torch: a second instead of several
        from pipeline.compute import gpus
        index = gpus.pick(device_count)
    print(index, flush=True)
    if hold == "fail":
        raise RuntimeError("the stage fails after claiming its GPU")
    time.sleep(float(hold))
""")


def start_job(lock_dir, device_count=2, hold="60", how="gpus", **env):
    """A stage-like process that picks a GPU, prints its index and holds it for `hold` seconds (or fails)."""
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(device_count), hold, how], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), "LESSON2_GPU_LOCK_DIR": str(lock_dir),
                                 **env})


def claimed_index(job, timeout=30.0) -> int:
    """The index a job printed, once it has one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = job.stdout.readline()
        if line.strip().isdigit():
            return int(line)
        if job.poll() is not None and not line:
            break
    raise AssertionError(f"no GPU index printed; stderr: {job.stderr.read() if job.poll() is not None else ''}")


@pytest.fixture
def jobs():
    started = []
    yield started
    for job in started:
        if job.poll() is None:
            job.kill()
        job.wait()


def test_concurrent_jobs_get_different_gpus_and_a_killed_jobs_gpu_goes_to_the_next(tmp_path, jobs):
    first, second = start_job(tmp_path, how="runtime"), start_job(tmp_path, how="runtime")
    jobs += [first, second]
    first_gpu, second_gpu = claimed_index(first), claimed_index(second)
    assert {first_gpu, second_gpu} == {0, 1}
    waiting = start_job(tmp_path)
    jobs.append(waiting)
    time.sleep(2)
    assert waiting.poll() is None  # both GPUs held: it waits rather than share one
    os.kill(first.pid, signal.SIGKILL)  # as the OOM killer or a cancelled job would end it
    first.wait()
    assert claimed_index(waiting) == first_gpu


def test_a_failed_jobs_gpu_is_released_and_a_finished_jobs_too(tmp_path, jobs):
    failing = start_job(tmp_path, hold="fail")
    jobs.append(failing)
    assert claimed_index(failing) == 0
    assert failing.wait(timeout=30) != 0
    finishing = start_job(tmp_path, hold="0")
    jobs.append(finishing)
    assert claimed_index(finishing) == 0  # the failed job's GPU
    assert finishing.wait(timeout=30) == 0
    after = start_job(tmp_path)
    jobs.append(after)
    assert claimed_index(after) == 0


def test_locks_name_the_physical_gpus_a_visible_devices_mask_leaves(tmp_path, jobs):
    job = start_job(tmp_path, CUDA_VISIBLE_DEVICES="2,3")
    jobs.append(job)
    assert claimed_index(job) == 0  # cuda:0 of the visible ones, which is physical GPU 2
    assert (tmp_path / "gpu-2.lock").exists() and not (tmp_path / "gpu-0.lock").exists()


def test_a_gpu_slurm_assigned_is_used_as_given_and_nothing_is_claimed(tmp_path, jobs):
    holders = [start_job(tmp_path), start_job(tmp_path)]
    jobs += holders
    for holder in holders:
        claimed_index(holder)
    in_slurm = start_job(tmp_path, SLURM_JOB_ID="7", CUDA_VISIBLE_DEVICES="5")
    jobs.append(in_slurm)
    assert claimed_index(in_slurm, timeout=10) == 0  # not waiting for the box's locks: the scheduler chose
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu-0.lock", "gpu-1.lock"]


def test_one_gpu_needs_no_lock(tmp_path, jobs):
    job = start_job(tmp_path, device_count=1, hold="0")
    jobs.append(job)
    assert claimed_index(job) == 0
    assert job.wait(timeout=30) == 0
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def planned_resources(dry_run_output: str) -> dict[str, dict[str, str]]:
    """rule -> its job's resources, from a dry run's job listing."""
    planned, rule = {}, None
    for line in dry_run_output.splitlines():
        if match := re.match(r"(?:local)?rule (\w+):", line.strip()):
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            planned[rule] = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
    return planned


@pytest.mark.workflow
@pytest.mark.parametrize("device, devices, training, other", [("cpu", 1, "0", "0"), ("auto", 1, "1", "1"),
                                                              ("cuda", 2, "2", "1")])
def test_torch_jobs_ask_for_one_gpu_per_process_only_on_a_gpu_and_cpu_jobs_for_none(tmp_path, device, devices,
                                                                                       training, other):
    override = write_override(tmp_path / "device.yaml", device=device, devices=devices)
    result = snakemake(REPO, tmp_path, "-n", "-p", configfiles=[CONFIGS / "tiny_csv.yaml", override])
    assert result.returncode == 0, result.stderr[-2000:]
    resources = planned_resources(result.stdout)
    assert {rule: resources[rule].get("gpu") for rule in ("train_head", "finetune")} == \
        {"train_head": training, "finetune": training}
    assert {rule: resources[rule].get("gpu") for rule in ("precompute", "lr_find", "tta")} == \
        {"precompute": other, "lr_find": other, "tta": other}
    for rule in ("split", "image_stats", "resize", "calibrate", "interpret", "report_tables", "submission"):
        assert resources[rule].get("gpu", "0") == "0", rule  # CPU stages never hold a GPU
    launches = "-m torch.distributed.run --standalone --nproc-per-node 2 -m pipeline.stages.train_head"
    assert (launches in result.stdout) == (devices == 2)
