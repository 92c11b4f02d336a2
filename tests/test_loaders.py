"""Real image loaders with and without worker processes: the same weights every run, and a run interrupted
mid-epoch that resumes from its resume point ends with exactly the weights of an uninterrupted one."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from PIL import Image

from conftest import REPO, Interrupted, InterruptedInEpoch, same_state, train_resumably
from pipeline.loaders import image_loaders
from pipeline.model import build_classifier

CPU = torch.device("cpu")
FITS = [{"lr": [1e-3, 3e-3, 1e-2], "n_cycle": 2, "cycle_len": 1}]


@pytest.fixture(scope="module")
def image_split(tmp_path_factory):
    """24 small images in two classes (bright vs dark), as the resize cache would hold them."""
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    rows = []
    for index in range(24):
        label = index % 2
        pixels = rng.integers(0, 128, (22, 26, 3)) + 120 * label
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"{index}.jpg")
        rows.append((f"{index}.jpg", label, index >= 18))
    frame = pd.DataFrame(rows, columns=["path", "y", "is_valid"])
    return root, frame[~frame["is_valid"]].reset_index(drop=True), frame[frame["is_valid"]].reset_index(drop=True)


def train(image_split, workers, resume_path, interrupt_in_epoch=None):
    root, train_rows, valid_rows = image_split
    params = {"size": 16, "batch_size": 6, "num_workers": workers, "augmentation": "side_on", "seed": 3}
    train_loader, valid_loader = image_loaders(train_rows, valid_rows, root, params, CPU)
    if interrupt_in_epoch is not None:
        train_loader = InterruptedInEpoch(train_loader, interrupt_in_epoch)
    torch.manual_seed(0)
    model = build_classifier("resnet18", "none", n_classes=2, ps=0.5)
    model.unfreeze()
    train_resumably(model, train_loader, valid_loader, FITS, resume_path, f"workers {workers}", seed=3)
    return model.state_dict()


@pytest.mark.parametrize("workers", [0, 2])
def test_two_runs_give_identical_weights_and_a_resumed_run_matches_them(image_split, tmp_path, workers):
    first = train(image_split, workers, tmp_path / "a.pt")
    assert same_state(first, train(image_split, workers, tmp_path / "b.pt"))
    with pytest.raises(Interrupted):
        train(image_split, workers, tmp_path / "c.pt", interrupt_in_epoch=1)
    assert (tmp_path / "c.pt").exists()
    assert same_state(first, train(image_split, workers, tmp_path / "c.pt"))



WORKER_SCRIPT = r'''
import sys, time, torch
from pipeline import loaders
if sys.argv[1] == "unprotected":
    loaders._die_with_parent = lambda: None
class Endless(torch.utils.data.Dataset):
    def __len__(self): return 10**6
    def __getitem__(self, i): return torch.zeros(100_000)  # fills the result queue fast
batches = iter(loaders.make_loader(Endless(), 64, False, 2, 0, torch.device("cpu")))
next(batches)
print("ready", flush=True)
time.sleep(120)
'''


def surviving_workers(mode: str) -> list:
    stage = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, mode], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
    stage.stdout.readline()
    workers = psutil.Process(stage.pid).children()
    os.kill(stage.pid, signal.SIGKILL)  # as the OOM killer would: the stage process alone
    stage.wait()
    time.sleep(2)
    alive = [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    for worker in alive:
        worker.kill()
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_loader_workers_die_with_a_killed_stage_so_snakemake_never_waits_on_its_log_pipe():
    assert surviving_workers("protected") == []
