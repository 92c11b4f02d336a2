"""Stochastic depth set on an already built Classifier (checkpoints are built with timm's drop_path_rate 0)."""
import copy

import pytest
import timm
import torch
from timm.layers import DropPath
from torch import nn

from pipeline.models.classifier import build_classifier, set_drop_path, supports_drop_path

ARCH = "tf_efficientnet_lite0"


@pytest.fixture
def lite0():
    torch.manual_seed(0)
    return build_classifier(ARCH, "none", n_classes=3)


def drop_probabilities(blocks) -> list[float]:
    """Per block, in timm's build order: its DropPath's probability, 0 for the nn.Identity timm puts there at 0."""
    return [block.drop_path.drop_prob if isinstance(block.drop_path, DropPath) else 0.0 for block in blocks]


def timm_blocks(module: nn.Module) -> list[nn.Module]:
    return [block for stage in module.blocks for block in stage]


def test_drop_path_follows_timms_schedule_and_keeps_the_checkpoint_layout(lite0):
    keys = list(lite0.state_dict())
    n_set = set_drop_path(lite0, 0.2)

    blocks = timm_blocks(lite0.body.model)
    probabilities = drop_probabilities(blocks)
    assert n_set == len(blocks) == 16
    assert probabilities == pytest.approx([0.2 * index / len(blocks) for index in range(len(blocks))])
    assert probabilities[0] == 0 and max(probabilities) < 0.2
    assert all(later > earlier for earlier, later in zip(probabilities, probabilities[1:]))
    # What timm itself builds with drop_path_rate=0.2 is the reference for the schedule.
    reference = timm.create_model(ARCH, pretrained=False, drop_path_rate=0.2)
    assert probabilities == pytest.approx(drop_probabilities(timm_blocks(reference)))
    assert list(lite0.state_dict()) == keys
    restored = build_classifier(ARCH, "none", n_classes=3)
    restored.load_state_dict(lite0.state_dict())  # strict: a checkpoint from either model loads into the other


def test_drop_path_is_the_identity_in_eval_mode(lite0):
    images = torch.randn(4, 3, 64, 64)
    lite0.eval()
    with torch.no_grad():
        without = lite0(images)
        set_drop_path(lite0, 0.5)  # after eval(): the layers it adds must not start in training mode
        assert supports_drop_path(lite0)
        with_drop_path = lite0(images)
    assert torch.equal(with_drop_path, without)


def test_drop_path_changes_what_the_body_computes_in_training(lite0):
    """The body alone: it has no dropout, so the only randomness is drop path's (BatchNorm uses the batch's stats)."""
    images = torch.randn(8, 3, 64, 64)
    lite0.train()

    def body_output(rate: float) -> torch.Tensor:
        set_drop_path(lite0, rate)
        torch.manual_seed(1)
        with torch.no_grad():
            return lite0.body(images)

    plain = body_output(0.0)
    assert not torch.allclose(body_output(0.5), plain)
    assert torch.equal(body_output(0.0), plain)


def test_rate_zero_takes_drop_path_out_again(lite0):
    never = copy.deepcopy(lite0)
    set_drop_path(lite0, 0.3)
    assert any(isinstance(module, DropPath) for module in lite0.body.modules())

    assert set_drop_path(lite0, 0.0) == 16
    assert not any(isinstance(module, DropPath) for module in lite0.body.modules())
    assert [type(module) for module in lite0.modules()] == [type(module) for module in never.modules()]
    images = torch.randn(8, 3, 64, 64)
    outputs = []
    for model in (lite0, never):  # separate copies: train-mode BatchNorm moves each one's running stats alike
        model.train()
        torch.manual_seed(2)
        with torch.no_grad():
            outputs.append(model(images))
    assert torch.equal(*outputs)


def test_a_torchvision_resnet_refuses_drop_path_by_name_but_takes_rate_zero():
    resnet18 = build_classifier("resnet18", "none", n_classes=3)
    with pytest.raises(ValueError, match=r"resnet18.*needs a timm backbone with residual blocks"):
        set_drop_path(resnet18, 0.1)
    assert not supports_drop_path(resnet18)
    assert set_drop_path(resnet18, 0.0) == 0


def test_a_rate_outside_zero_to_one_is_refused(lite0):
    with pytest.raises(ValueError, match="probability"):
        set_drop_path(lite0, 1.5)
