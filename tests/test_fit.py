import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import Interrupted, InterruptedInEpoch, same_state, tiny_problem, train_resumably
from pipeline.train import fit as fit_module
from pipeline.train.fit import (DEFAULT_OPTIMIZER, EpochLog, FitSpec, OptimizerSpec, Phase, ResumePoint, TensorBatches,
                                fit, lr_find, run_fits)
from pipeline.models.classifier import build_classifier

CPU = torch.device("cpu")


def test_epoch_counts_follow_cycle_len_and_cycle_mult():
    assert FitSpec(1e-2, 3).epochs == 3
    assert FitSpec(1e-2, 3, cycle_len=1).epochs == 3
    assert FitSpec(1e-2, 3, cycle_len=1, cycle_mult=2).epochs == 7
    assert FitSpec(1e-2, 2, cycle_len=2, cycle_mult=3).epochs == 8


def test_sgdr_restarts_at_the_start_of_each_cycle(tmp_path):
    model, train, valid = tiny_problem()  # 4 batches per epoch
    log = EpochLog(tmp_path / "log.csv")
    phase = Phase(name="t", model=model, train_batches=train, valid_batches=valid, device=CPU, log=log, warmup=False)
    history = fit(phase, FitSpec(0.1, 3, cycle_len=1, cycle_mult=2), 0)
    lrs = [step[0] for step in history]
    assert len(lrs) == 7 * 4
    for start, length in [(0, 4), (4, 8), (12, 16)]:  # cycles of 1, 2 and 4 epochs
        cycle = lrs[start:start + length]
        assert cycle[0] == pytest.approx(0.1)
        assert all(a > b for a, b in zip(cycle, cycle[1:]))
        assert cycle[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * (length - 1) / length)))
    written = pd.read_csv(tmp_path / "log.csv")
    assert written["epoch"].tolist() == list(range(7))
    assert {"train_loss", "valid_loss", "accuracy"} <= set(written.columns)


def test_warmup_runs_the_first_twentieth_of_the_first_cycle_at_a_hundredth():
    model, _, valid = tiny_problem()
    x, y = torch.randn(400, 8), torch.randint(0, 2, (400,))
    train = TensorBatches(x, y, 10)  # 40 batches: warm-up is 2 iterations
    phase = Phase(name="t", model=model, train_batches=train, valid_batches=valid, device=CPU,
                  log=EpochLog(None), warmup=True)
    history = fit(phase, FitSpec(0.1, 1, cycle_len=1), 0)
    assert [step[0] for step in history[:3]] == pytest.approx([0.001, 0.001, 0.1 / 2 * (1 + math.cos(math.pi * 2 / 40))])


def test_constant_lr_without_cycle_len():
    model, train, valid = tiny_problem()
    phase = Phase(name="t", model=model, train_batches=train, valid_batches=valid, device=CPU,
                  log=EpochLog(None))
    history = fit(phase, FitSpec(0.05, 2), 0)
    assert {step[0] for step in history} == {0.05}


def test_fit_learns_a_separable_problem():
    model, train, valid = tiny_problem(n=256)
    log = EpochLog(None)
    fit(Phase(name="t", model=model, train_batches=train, valid_batches=valid, device=CPU, log=log), FitSpec(0.1, 3), 0)
    assert log.rows[-1]["accuracy"] > 0.9


def test_differential_learning_rates_map_onto_the_three_layer_groups():
    model = build_classifier("resnet18", "none", n_classes=2)
    model.unfreeze()
    optimizer = DEFAULT_OPTIMIZER.make(model, [1e-4, 1e-3, 1e-2])
    assert [group["lr"] for group in optimizer.param_groups] == [1e-4, 1e-3, 1e-2]
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 0
    model.freeze()
    assert [group["lr"] for group in DEFAULT_OPTIMIZER.make(model, [1e-4, 1e-3, 1e-2]).param_groups] == [1e-2]


def test_adamw_is_fastai_v2s_adam_with_decoupled_weight_decay_per_layer_group():
    model = build_classifier("resnet18", "none", n_classes=2)
    model.unfreeze()
    optimizer = OptimizerSpec("adamw", 0.01).make(model, [1e-4, 1e-3, 1e-2])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [group["lr"] for group in optimizer.param_groups] == [1e-4, 1e-3, 1e-2]
    assert optimizer.defaults["betas"] == (0.9, 0.99) and optimizer.defaults["eps"] == 1e-5
    assert optimizer.defaults["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="unknown optimizer 'adam': sgd or adamw"):
        OptimizerSpec("adam", 0.0).make(model, 1e-3)


def test_lr_find_restores_weights_and_stops_when_the_loss_explodes():
    model, train, _ = tiny_problem(n=1600, batch_size=16)  # 100 batches
    model.insert(0, nn.BatchNorm1d(8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_find(model, train, CPU)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result["lr"][0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(result["lr"], result["lr"][1:])]
    assert ratios == pytest.approx([(10 / 1e-5) ** (1 / 99)] * len(ratios))
    assert len(result["lr"]) <= 100
    assert result["lr"][0] <= result["suggested_lr"] <= result["lr"][-1]


def test_the_suggested_lr_is_where_the_loss_falls_fastest_not_where_it_rises():
    """A loss curve as lr_find records one: flat, then falling steepest around 1e-2, then exploding past 1."""
    lrs = list(np.logspace(-5, 1, 61))
    loss = [2.0 - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 2))) + (3 * (math.log10(lr)) ** 2 if lr > 1 else 0)
            for lr in lrs]
    suggested = fit_module.suggest_lr(lrs, loss)
    assert 10 ** -2.2 <= suggested <= 10 ** -1.8
    assert fit_module.suggest_lr(lrs, [math.nan] * 60 + [1.0]) == lrs[0]  # nothing to go on: the lowest lr


def recorded_group_lrs(monkeypatch) -> list[list[float]]:
    """Every training step's per-group learning rates, as the optimiser had them for that step."""
    seen, real_step = [], fit_module.train_step

    def recording(model, optimizer, *args, **kwargs):
        seen.append([group["lr"] for group in optimizer.param_groups])
        return real_step(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(fit_module, "train_step", recording)
    return seen


def test_lr_find_after_unfreezing_moves_the_groups_together_and_restores_every_weight(monkeypatch):
    torch.manual_seed(0)
    model = build_classifier("resnet18", "none", n_classes=3, ps=(0.1, 0.1))
    model.unfreeze()
    batches = TensorBatches(torch.randn(48, 3, 32, 32), torch.randint(0, 3, (48,)), 8, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    before = copy.deepcopy(model.state_dict())
    seen = recorded_group_lrs(monkeypatch)
    result = lr_find(model, batches, CPU, lr=[1e-4, 1e-3, 1e-2])
    assert same_state(before, model.state_dict())  # weights and BatchNorm statistics, bit for bit
    assert seen[0] == pytest.approx([1e-7, 1e-6, 1e-5])  # the last group starts at start_lr, in the fit's ratios
    assert all([lr / lrs[-1] for lr in lrs] == pytest.approx([0.01, 0.1, 1]) for lrs in seen)
    assert result["lr"] == pytest.approx([lrs[-1] for lrs in seen])  # the plot's x-axis: the last group's lr
    assert result["group_ratios"] == pytest.approx([0.01, 0.1, 1])
    seen.clear()
    model.freeze()
    lr_find(model, batches, CPU, lr=[1e-4, 1e-3, 1e-2])
    assert seen[0] == pytest.approx([1e-5])  # frozen: the head alone sweeps


def test_every_batch_loss_is_kept_and_a_resumed_run_keeps_the_same(tmp_path):
    fits = [{"lr": 0.05, "n_cycle": 2}, {"lr": 0.05, "n_cycle": 1, "cycle_len": 1}]
    model, train, valid = tiny_problem()  # 4 batches per epoch
    clean = EpochLog(None)
    run_fits(Phase(name="t", model=model, train_batches=train, valid_batches=valid, device=CPU, log=clean), fits)
    assert [(phase, fit_index) for phase, fit_index, _ in clean.batch_losses] == [("t", 0)] * 8 + [("t", 1)] * 4
    model, train, valid = tiny_problem()
    killed = EpochLog(None)
    with pytest.raises(Interrupted):  # in the second epoch of the first fit
        run_fits(Phase(name="t", model=model, train_batches=InterruptedInEpoch(train, 1), valid_batches=valid,
                       device=CPU, log=killed, resume=ResumePoint(tmp_path / "resume.pt", "k", model, killed)), fits)
    model, train, valid = tiny_problem()
    resumed = EpochLog(None)
    run_fits(Phase(name="t", model=model, train_batches=train, valid_batches=valid, device=CPU, log=resumed,
                   resume=ResumePoint(tmp_path / "resume.pt", "k", model, resumed)), fits)
    assert resumed.batch_losses == clean.batch_losses


def test_a_killed_runs_state_is_resumed_by_the_same_parameters_and_removed_by_others(tmp_path):
    fits = [{"lr": 0.05, "n_cycle": 2}]
    model, train, valid = tiny_problem()
    killed = EpochLog(None)
    with pytest.raises(Interrupted):
        run_fits(Phase(name="t", model=model, train_batches=InterruptedInEpoch(train, 1), valid_batches=valid,
                       device=CPU, log=killed, resume=ResumePoint(tmp_path / "resume.pt", "k", model, killed)), fits)
    assert ResumePoint(tmp_path / "resume.pt", "k", model, EpochLog(None)).saved is not None
    assert ResumePoint(tmp_path / "resume.pt", "other", model, EpochLog(None)).saved is None
    assert not (tmp_path / "resume.pt").exists()


def test_lr_find_stops_at_the_first_smoothed_loss_over_four_times_the_best(monkeypatch):
    # A scripted loss: flat, then rising 8 % a step, so the smoothed loss passes 2x, 3x, 4x, 5x the best at
    # different steps and only the 4x rule stops exactly where asserted.
    scripted = [1.0] * 30 + [1.08 ** k for k in range(1, 71)]
    feed = iter(scripted)
    monkeypatch.setattr(fit_module, "train_step", lambda *args, **kwargs: next(feed))
    model, train, _ = tiny_problem(n=1600, batch_size=16)  # 100 batches
    result = lr_find(model, train, CPU)
    losses, smoothed = result["loss"], result["smoothed_loss"]
    assert losses == scripted[:len(losses)]
    ema, expected = 0.0, []
    for step, loss in enumerate(losses, start=1):  # EMA beta 0.98, bias-corrected
        ema = 0.98 * ema + 0.02 * loss
        expected.append(ema / (1 - 0.98 ** step))
    assert smoothed == pytest.approx(expected)
    over_four_times_best = [value > 4 * min(smoothed[:step]) for step, value in enumerate(smoothed) if step]
    assert over_four_times_best[-1] and not any(over_four_times_best[:-1])
    assert len(losses) < 100


def test_a_resume_point_saved_with_other_parameters_is_removed_not_resumed(tmp_path, capsys):
    path = tmp_path / "resume.pt"
    model, train, valid = tiny_problem()
    with pytest.raises(Interrupted):  # a run at another lr is killed in its third epoch; its resume point stays
        train_resumably(model, InterruptedInEpoch(train, 2), valid, [{"lr": 0.5, "n_cycle": 3}], path, "lr 0.5")
    assert path.exists()
    fits = [{"lr": 0.05, "n_cycle": 3}]
    rerun = train_resumably(tiny_problem()[0], train, valid, fits, path, "lr 0.05")
    assert "removed" in capsys.readouterr().out
    clean = train_resumably(tiny_problem()[0], train, valid, fits, tmp_path / "none.pt", "lr 0.05")
    assert same_state(rerun.state_dict(), clean.state_dict())
    assert not path.exists()


class CountedBatches(TensorBatches):
    iterations = 0

    def __iter__(self):
        self.iterations += 1
        return super().__iter__()


def test_each_epoch_iterates_its_batches_exactly_once():
    # A progress bar that called iter() on a DataLoader as well would start a second set of workers every epoch.
    model, train, valid = tiny_problem()
    counted = CountedBatches(train.x, train.y, 16, shuffle=True, generator=torch.Generator())
    phase = Phase(name="t", model=model, train_batches=counted, valid_batches=valid, device=CPU, log=EpochLog(None))
    fit(phase, FitSpec(0.05, 3), 0)
    assert counted.iterations == 3


@pytest.mark.workflow
def test_the_training_stages_fit_with_the_recipes_optimizer(micro_run):
    """The micro recipe asks for AdamW: every fit of the head and the fine-tune size says it used it, and the fits on
    images say which regularisers they trained with (those on the activations take none)."""
    for log, regularised in (("train_head.log", "label_smoothing=0.1, random_erasing=0.25, ema_decay=0.9)"),
                             ("finetune_1_32.log", "ema_warmup=True, drop_path=0.1)")):
        fits = [line for line in (micro_run.out / "logs" / log).read_text().splitlines() if " epochs of " in line]
        assert fits and all("(adamw, weight decay 0.01" in line for line in fits), (log, fits)
        assert [line.endswith(regularised) for line in fits] == [not line.startswith("precomputed") for line in fits]


def test_the_heads_activations_and_read_only_targets_load_as_copies_without_torchs_warning(tmp_path):
    """torch warns (once per process) on a tensor over read-only memory; every demo run printed it."""
    from pipeline.stages.train_head import load_activations
    np.save(tmp_path / "train.npy", np.ones((4, 3), np.float32))
    targets = np.arange(4)
    targets.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        activations, labels = load_activations(tmp_path, "train", targets)
    assert labels.tolist() == [0, 1, 2, 3] and labels.data_ptr() != targets.ctypes.data
    assert activations.shape == (4, 3)
