"""The regularisers beyond fastai 0.7 (the recipe's `regularise`): what they do to a batch and its loss, the EMA of
the weights that validation sees, and exact resume with them on."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import Interrupted, InterruptedInEpoch, same_state
from pipeline.train.fit import EpochLog, Phase, ResumePoint, TensorBatches, evaluate, run_fits
from pipeline.train.regularise import OFF, BatchMixer, Regularisation, averaged_model, loss

CPU = torch.device("cpu")


def regularisation(**on) -> Regularisation:
    return Regularisation.from_section({**vars(OFF), **on})


def images(n=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator)


@pytest.mark.parametrize("on", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}],
                         ids=["mixup", "cutmix", "both"])
def test_a_mixed_batch_has_soft_targets_that_sum_to_one_and_repeats_under_the_same_seed(on):
    mixer = BatchMixer(regularisation(**on), n_classes=3)
    x, y = images()
    torch.manual_seed(1)
    mixed, targets = mixer(x.clone(), y)
    assert targets.shape == (16, 3) and torch.allclose(targets.sum(1), torch.ones(16))
    assert not torch.equal(mixed, x) and (targets.max(1).values < 1).any()  # two images and two labels in one
    torch.manual_seed(1)
    again, again_targets = mixer(x.clone(), y)
    assert torch.equal(again, mixed) and torch.equal(again_targets, targets)


def test_with_mix_prob_0_the_batch_is_untouched_and_its_targets_one_hot():
    x, y = images()
    mixed, targets = BatchMixer(regularisation(mixup_alpha=0.4, mix_prob=0.0), n_classes=3)(x.clone(), y)
    assert torch.equal(mixed, x) and torch.equal(targets, F.one_hot(y, 3).float())


def test_the_loss_without_regularisers_is_fastais_nll_and_smoothing_spreads_epsilon_over_the_classes():
    log_probs = torch.log_softmax(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    y = torch.arange(8) % 5
    assert torch.equal(loss(log_probs, y, 0.0), F.nll_loss(log_probs, y))
    smoothed = 0.9 * F.nll_loss(log_probs, y) + 0.1 * (-log_probs.mean(dim=1)).mean()
    assert torch.allclose(loss(log_probs, y, 0.1), smoothed)
    assert torch.allclose(loss(log_probs, F.one_hot(y, 5).float(), 0.0), F.nll_loss(log_probs, y))


def image_problem():
    """A 3-class problem on 8x8 images a linear model can learn, its train / valid batches."""
    torch.manual_seed(0)
    x, y = images(48)
    x[torch.arange(48), y] += 1.0  # the label's channel is brighter
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3), nn.LogSoftmax(dim=1))
    return model, TensorBatches(x, y, 12, shuffle=True, generator=torch.Generator().manual_seed(0)), \
        TensorBatches(x, y, 12)


EVERYTHING = regularisation(mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1, ema_decay=0.9, ema_warmup=True)
FITS = [{"lr": 0.1, "n_cycle": 1, "cycle_len": 2}, {"lr": 0.05, "n_cycle": 2, "cycle_len": 1}]


def train(fits, resume_path=None, kill_in_epoch=None):
    """The fits as a stage runs them with every batch-side regulariser on; (model, its EMA, the epoch log)."""
    model, batches, valid = image_problem()
    averaged = averaged_model(model, EVERYTHING)
    log = EpochLog(None)
    resume = ResumePoint(resume_path, "k", model, log) if resume_path else None
    if kill_in_epoch is not None:
        batches = InterruptedInEpoch(batches, kill_in_epoch)
    run_fits(Phase(name="t", model=model, train_batches=batches, valid_batches=valid, device=CPU, log=log,
                   resume=resume, regularisation=EVERYTHING, averaged=averaged), fits)
    return model, averaged, log


def test_each_epoch_validates_the_weight_average_which_differs_from_the_trained_weights():
    model, averaged, log = train(FITS)
    _, _, valid = image_problem()
    assert log.rows[-1]["valid_loss"] == pytest.approx(evaluate(averaged.module, valid, CPU)[0], rel=1e-6)
    assert not same_state(averaged.module.state_dict(), model.state_dict())
    assert int(averaged.n_averaged) == 4 * 4  # 4 epochs of 4 batches, one update per step


def test_a_killed_run_with_mixing_smoothing_and_ema_resumes_to_the_uninterrupted_weights_and_average(tmp_path):
    clean_model, clean_average, clean_log = train(FITS)
    with pytest.raises(Interrupted):  # in the second fit's first epoch
        train(FITS, tmp_path / "resume.pt", kill_in_epoch=2)
    model, average, log = train(FITS, tmp_path / "resume.pt")
    assert same_state(model.state_dict(), clean_model.state_dict())
    assert same_state(average.state_dict(), clean_average.state_dict())
    assert [row["valid_loss"] for row in log.rows] == [row["valid_loss"] for row in clean_log.rows]


def test_ema_warmup_follows_the_first_steps_more_closely_than_a_fixed_decay():
    model, _, _ = image_problem()
    fixed, warmed = (averaged_model(model, regularisation(ema_decay=0.99, ema_warmup=warmup)) for warmup in (0, 1))
    for averaged in (fixed, warmed):
        averaged.update_parameters(model)  # the first update copies the weights
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved[1].weight += 1.0
    for averaged in (fixed, warmed):
        averaged.update_parameters(moved)
    shift = {name: float((averaged.module[1].weight - model[1].weight).mean().detach())
             for name, averaged in (("fixed", fixed), ("warmed", warmed))}
    assert shift["fixed"] == pytest.approx(0.01, rel=1e-4)  # 1 - decay
    assert shift["warmed"] == pytest.approx(1 - 2 / 11, rel=1e-4)  # timm's warm-up: decay (1 + 1) / (10 + 1)
