"""Real image loaders with and without worker processes: the same weights every run, and a run interrupted
mid-epoch that resumes from its resume point ends with exactly the weights of an uninterrupted one."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from conftest import REPO, Interrupted, InterruptedInEpoch, same_state, train_resumably
from pipeline.train import fit
from pipeline.recipe import defaults as recipe_defaults
from pipeline.compute import runtime
from pipeline.train.fit import EpochLog, FitSpec
from pipeline.train.loaders import ImageDataset, Prefetched, image_loaders, inference_loader, make_loader
from pipeline.models.classifier import build_classifier
from pipeline.data.transforms import train_transform

CPU = torch.device("cpu")


def loader_params(params: dict) -> dict:
    """`params` as a stage passes it to the loaders: with the schema's defaults for the keys it leaves out."""
    return recipe_defaults.complete(params, ("seed", "transforms", "loader"))
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
    train_loader, valid_loader = image_loaders(train_rows, valid_rows, root, loader_params(params), CPU)
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


def test_the_prefetching_inference_loader_gives_the_plain_loaders_batches_in_order(image_split):
    """TTA's augmented passes draw their randomness in the prefetch thread: the same draws, in the same order, as
    the same loader iterated in the stage's own thread."""
    root, train_rows, _ = image_split
    dataset = ImageDataset(root, train_rows["path"], train_rows["y"], train_transform(16, 1.1, "side_on"))
    params = {"batch_size": 5, "num_workers": 0}
    prefetched = inference_loader(dataset, loader_params(params), CPU)
    assert isinstance(prefetched, Prefetched) and len(prefetched) == 4 and prefetched.dataset is dataset
    torch.manual_seed(7)
    background = [(x.clone(), y.clone()) for x, y in prefetched]
    torch.manual_seed(7)
    foreground = list(prefetched.loader)
    assert len(background) == len(foreground) == 4
    for (x, y), (x_plain, y_plain) in zip(background, foreground):
        assert torch.equal(x, x_plain) and torch.equal(y, y_plain)


def test_a_bad_image_stops_a_prefetched_pass_with_its_own_error_and_leaves_no_thread(image_split, tmp_path):
    root, train_rows, _ = image_split
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    for index in range(len(train_rows)):
        (tmp_path / f"{index}.jpg").symlink_to(root / f"{index}.jpg")
    paths = list(train_rows["path"][:7]) + ["broken.jpg"]
    loader = inference_loader(ImageDataset(tmp_path, paths, None, train_transform(16)),
                              loader_params({"batch_size": 4, "num_workers": 0}), CPU)
    with pytest.raises(Exception, match="broken.jpg"):
        list(loader)
    for _ in zip(range(1), loader):  # a consumer that stops early: its producer thread must stop too
        pass
    time.sleep(0.3)
    assert not [thread for thread in threading.enumerate() if thread.name == "prefetch"]


def test_training_runs_in_channels_last(image_split):
    """The model and every batch it trains and validates on are NHWC, the layout convolutions run fastest in."""
    root, train_rows, valid_rows = image_split
    train_loader, valid_loader = image_loaders(train_rows, valid_rows, root,
                                               loader_params({"size": 16, "batch_size": 6, "num_workers": 0}), CPU)
    model = runtime.on_device(build_classifier("resnet18", "none", n_classes=2), CPU)
    seen = []
    model.body[0].register_forward_pre_hook(lambda _, args: seen.append(
        (model.training, args[0].is_contiguous(memory_format=torch.channels_last))))
    fit.fit(fit.Phase(name="test", model=model, train_batches=train_loader, valid_batches=valid_loader, device=CPU,
                      log=EpochLog(None)), FitSpec(1e-3, 1), 0)
    assert model.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert {training for training, _ in seen} == {True, False}
    assert all(nhwc for _, nhwc in seen)


SLOW_DATASET = """
import time, torch
class SlowAfterTheFirst(torch.utils.data.Dataset):
    # Every item after the first takes a minute, as a huge image would: the workers are busy inside __getitem__,
    # where torch's own check that the parent lives (between items) never runs.
    def __len__(self): return 100
    def __getitem__(self, i):
        if i:
            time.sleep(60)
        return torch.zeros(1)
"""

WORKER_SCRIPT = r'''
import sys, time, torch
sys.path.insert(0, sys.argv[2])  # the dataset's module: the workers, forked from the fork server, import it there
from slow_dataset import SlowAfterTheFirst
from pipeline.train import loaders
if sys.argv[1] == "unprotected":  # the control: the stage's loader without the worker's request to die with it
    loader = torch.utils.data.DataLoader(SlowAfterTheFirst(), num_workers=2,
                                         multiprocessing_context=loaders.worker_context())
else:
    loader = loaders.make_loader(SlowAfterTheFirst(), 1, False, 2, 0, torch.device("cpu"))
batches = iter(loader)
next(batches)
print("ready", flush=True)
time.sleep(120)
'''


def stage_with_workers(mode: str, module_dir) -> tuple[subprocess.Popen, list]:
    stage = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, mode, str(module_dir)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO)
    stage.stdout.readline()
    # The workers are the fork server's children (loaders.worker_context), beside multiprocessing's resource tracker.
    workers = [worker for child in psutil.Process(stage.pid).children() for worker in child.children()]
    assert len(workers) == 2
    return stage, workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_loader_workers_die_with_a_killed_stage_so_snakemake_never_waits_on_its_log_pipe(tmp_path):
    (tmp_path / "slow_dataset.py").write_text(SLOW_DATASET)
    stages = {mode: stage_with_workers(mode, tmp_path) for mode in ("unprotected", "protected")}  # side by side
    for stage, _ in stages.values():
        os.kill(stage.pid, signal.SIGKILL)  # as the OOM killer would: the stage process alone
        stage.wait()
    time.sleep(2)
    alive = {mode: [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
             for mode, (_, workers) in stages.items()}
    for worker in alive["unprotected"] + alive["protected"]:
        worker.kill()
    assert len(alive["unprotected"]) == 2  # the control: without the request, both outlive the stage
    assert alive["protected"] == []


def test_a_training_set_one_image_over_a_multiple_of_the_batch_size_trains():
    """BatchNorm cannot train on a batch of one (torch raises); a blend's pseudo-labelled training set of 65 images
    with batch 32 ended a train_head job that way. Validation keeps every image."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    x, y = torch.randn(65, 3), torch.zeros(65)
    training = [make_loader(TensorDataset(x, y), batch_size=32, shuffle=True, num_workers=0, seed=0,
                            device=torch.device("cpu")),
                fit.TensorBatches(x, y, batch_size=32, shuffle=True, generator=torch.Generator())]
    for batches in training:
        assert len(batches) == 2
        for inputs, _ in batches:
            model(inputs)
    validation = make_loader(TensorDataset(x, y), batch_size=32, shuffle=False, num_workers=0, seed=0,
                             device=torch.device("cpu"))
    assert sum(len(inputs) for inputs, _ in validation) == 65
