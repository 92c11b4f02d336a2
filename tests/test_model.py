import os
from urllib.error import URLError

import pytest
import torch
from torch import nn
from torchvision import models

from pipeline.model import (WeightsError, build_classifier, load_backbone, load_checkpoint, restore_model,
                            save_checkpoint)


@pytest.fixture(scope="module")
def resnet34():
    return build_classifier("resnet34", "none", n_classes=120, ps=0.5)


def test_resnet34_gives_1024_concat_pooled_features(resnet34):
    resnet34.eval()
    with torch.no_grad():
        features = resnet34.features(torch.zeros(2, 3, 64, 64))
    assert features.shape == (2, 1024)
    assert resnet34.n_features == 1024


def test_head_is_fastais_with_ps_for_both_dropouts(resnet34):
    kinds = [type(layer) for layer in resnet34.head]
    assert kinds == [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear,
                     nn.LogSoftmax]
    assert (resnet34.head[2].in_features, resnet34.head[2].out_features) == (1024, 512)
    assert (resnet34.head[6].in_features, resnet34.head[6].out_features) == (512, 120)
    assert [resnet34.head[1].p, resnet34.head[5].p] == [0.5, 0.5]
    assert torch.count_nonzero(resnet34.head[2].bias) == 0


def test_default_dropouts_are_a_quarter_then_a_half():
    model = build_classifier("resnet18", "none", n_classes=3)
    assert [model.head[1].p, model.head[5].p] == [0.25, 0.5]


def test_three_layer_groups_split_before_layer3(resnet34):
    g0, g1, g2 = resnet34.layer_groups
    backbone = models.resnet34()
    assert [type(m) for m in g0] == [type(m) for m in list(backbone.children())[:6]]  # conv1 ... layer2
    assert len(g1) == 2  # layer3, layer4
    assert resnet34.head in list(g2.modules())


def test_freeze_trains_only_the_head_and_keeps_frozen_batchnorm_in_eval(resnet34):
    resnet34.freeze()
    resnet34.train()
    trainable = {name.split(".")[0] for name, p in resnet34.named_parameters() if p.requires_grad}
    assert trainable == {"head"}
    body_bn = [m for m in resnet34.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert body_bn and not any(m.training for m in body_bn)
    assert resnet34.head[0].training
    running_mean = body_bn[0].running_mean.clone()
    resnet34(torch.randn(2, 3, 64, 64))
    assert torch.equal(body_bn[0].running_mean, running_mean)


def test_unfreeze_trains_everything(resnet34):
    resnet34.unfreeze()
    resnet34.train()
    assert all(p.requires_grad for p in resnet34.parameters())
    assert all(m.training for m in resnet34.modules())


def test_local_weights_file_is_loaded(tmp_path):
    reference = models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    loaded = load_backbone("resnet18", str(tmp_path / "resnet18.pth"))
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)


def test_imagenet_weights_come_from_torchvisions_enum_and_the_torch_hub_cache(tmp_path, monkeypatch):
    weights = models.ResNet18_Weights.DEFAULT
    reference = models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(weights.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loaded = load_backbone("resnet18", "imagenet")
    assert torch.equal(loaded.fc.weight, reference.fc.weight)


def test_missing_imagenet_weights_offline_name_the_file_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError, match=r"hub/checkpoints/resnet18-.*\.pth"):
        load_backbone("resnet18", "imagenet")


def test_weights_file_for_another_arch_is_a_clear_error(tmp_path):
    torch.save(models.resnet18().state_dict(), tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="does not fit resnet34"):
        load_backbone("resnet34", str(tmp_path / "w.pth"))


def test_checkpoint_round_trip_and_metadata_checks(tmp_path):
    model = build_classifier("resnet18", "none", n_classes=2)
    meta = {"classes": ["a", "b"], "arch": "resnet18", "size": 32, "ps": [0.25, 0.5], "xtra_fc": [512]}
    save_checkpoint(model, tmp_path / "model.pt", meta)
    restored, restored_meta = restore_model(tmp_path / "model.pt", "resnet18", ["a", "b"])
    assert restored_meta["size"] == 32
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    with pytest.raises(WeightsError, match="classes"):
        load_checkpoint(tmp_path / "model.pt", {"classes": ["a", "c"]})
    with pytest.raises(WeightsError, match="arch"):
        restore_model(tmp_path / "model.pt", "resnet34", ["a", "b"])
