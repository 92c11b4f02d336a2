import os
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models

from pipeline.models import backbones
from pipeline.models.backbones import WeightsError
from pipeline.models.classifier import (Float32LogSoftmax, build_classifier, checkpoint_meta, load_checkpoint, restore_model,
                            save_checkpoint)

# The same stage tests for a torchvision backbone (the lesson's ResNet) and a timm one (the demo's, pretrained).
BACKBONES = {"resnet34": "none", "tf_efficientnet_lite0": "packaged"}


@pytest.fixture(scope="module", params=list(BACKBONES))
def classifier(request):
    return build_classifier(request.param, BACKBONES[request.param], n_classes=120, ps=0.5)


def test_resnet34_gives_1024_concat_pooled_features():
    resnet34 = build_classifier("resnet34", "none", n_classes=120)
    resnet34.eval()
    with torch.no_grad():
        features = resnet34.features(torch.zeros(2, 3, 64, 64))
    assert features.shape == (2, 1024)
    assert resnet34.n_features == 1024


def test_under_bf16_autocast_the_log_probabilities_are_float32_and_each_row_sums_to_one(classifier):
    """`amp` on a GPU or a CPU with native bf16: scores computed from bf16 log-probabilities were off by ~0.5%."""
    torch.manual_seed(0)
    classifier.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs = classifier.head(torch.randn(8, classifier.n_features) * 3)
    assert log_probs.dtype == torch.float32
    assert torch.allclose(log_probs.exp().sum(dim=1), torch.ones(8, dtype=torch.float32), atol=1e-6)


def test_the_head_is_fastais_with_ps_for_both_dropouts(classifier):
    kinds = [type(layer) for layer in classifier.head]
    assert kinds == [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear,
                     Float32LogSoftmax]
    assert (classifier.head[2].in_features, classifier.head[2].out_features) == (classifier.n_features, 512)
    assert (classifier.head[6].in_features, classifier.head[6].out_features) == (512, 120)
    assert [classifier.head[1].p, classifier.head[5].p] == [0.5, 0.5]
    assert torch.count_nonzero(classifier.head[2].bias) == 0


def test_default_dropouts_are_a_quarter_then_a_half():
    model = build_classifier("resnet18", "none", n_classes=3)
    assert [model.head[1].p, model.head[5].p] == [0.25, 0.5]


def test_resnet_layer_groups_split_before_layer3_as_fastai_07():
    resnet34 = build_classifier("resnet34", "none", n_classes=3)
    g0, g1, g2 = resnet34.layer_groups
    backbone = models.resnet34()
    assert [type(m) for m in g0] == [type(m) for m in list(backbone.children())[:6]]  # conv1 ... layer2
    assert len(g1) == 2  # layer3, layer4
    assert resnet34.head in list(g2.modules())


def test_timm_layer_groups_follow_its_stages_and_cover_the_body():
    lite0 = build_classifier("tf_efficientnet_lite0", "none", n_classes=3)
    first, second = lite0.body_groups
    assert first[:2] == ["model.conv_stem", "model.bn1"] and all(".blocks.6." not in name for name in first)
    assert "model.conv_head" in second and any(name.startswith("model.blocks.3.") for name in second)
    in_groups = {id(p) for group in lite0.layer_groups[:2] for p in group.parameters()}
    assert in_groups == {id(p) for p in lite0.body.parameters()}


def test_freeze_trains_only_the_head_and_keeps_frozen_batchnorm_in_eval(classifier):
    classifier.freeze()
    classifier.train()
    trainable = {name.split(".")[0] for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable == {"head"}
    body_bn = [m for m in classifier.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert body_bn and not any(m.training for m in body_bn)
    assert classifier.head[0].training
    running_mean = body_bn[0].running_mean.clone()
    classifier(torch.randn(2, 3, 64, 64))
    assert torch.equal(body_bn[0].running_mean, running_mean)


def test_unfreeze_trains_everything(classifier):
    classifier.unfreeze()
    classifier.train()
    assert all(p.requires_grad for p in classifier.parameters())
    assert all(m.training for m in classifier.modules())


def test_bn_freeze_keeps_the_bodys_running_statistics_while_it_trains(classifier):
    classifier.unfreeze()
    classifier.bn_freeze(True)
    classifier.train()
    body_bn = [m for m in classifier.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(m.training for m in body_bn) and all(p.requires_grad for p in classifier.body.parameters())
    assert classifier.head[0].training
    classifier.bn_freeze(False)
    assert all(m.training for m in body_bn)


def test_train_bn_trains_the_frozen_bodys_batchnorm_and_nothing_else_of_it(classifier):
    classifier.freeze()
    classifier.train_bn(True)
    classifier.train()
    body_bn = [m for m in classifier.body.modules() if isinstance(m, nn.BatchNorm2d)]
    trainable = {id(p) for p in classifier.body.parameters() if p.requires_grad}
    assert trainable == {id(p) for m in body_bn for p in m.parameters()}
    assert all(m.training for m in body_bn)
    running_mean = body_bn[0].running_mean.clone()
    classifier(torch.randn(2, 3, 64, 64))
    assert not torch.equal(body_bn[0].running_mean, running_mean)
    classifier.train_bn(False)
    assert not any(p.requires_grad for p in classifier.body.parameters())
    assert not any(m.training for m in body_bn)


def test_local_weights_file_is_loaded(tmp_path):
    reference = models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    loaded = backbones.create(backbones.resolve("resnet18"), str(tmp_path / "resnet18.pth"))
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)


def test_imagenet_weights_come_from_torchvisions_enum_and_the_torch_hub_cache(tmp_path, monkeypatch):
    weights = models.ResNet18_Weights.DEFAULT
    reference = models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / os.path.basename(weights.url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loaded = backbones.create(backbones.resolve("resnet18"), "imagenet")
    assert torch.equal(loaded.fc.weight, reference.fc.weight)


def test_missing_imagenet_weights_offline_name_the_file_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError, match=r"hub/checkpoints/resnet18-.*\.pth"):
        backbones.create(backbones.resolve("resnet18"), "imagenet")


def test_weights_file_for_another_arch_is_a_clear_error(tmp_path):
    torch.save(models.resnet18().state_dict(), tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="does not fit resnet34"):
        backbones.create(backbones.resolve("resnet34"), str(tmp_path / "w.pth"))


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


def test_a_fine_tune_checkpoint_keeps_the_heads_own_dropouts_for_the_next_size(tmp_path):
    """A fine-tune size's slice carries no ps: its checkpoint must record the restored head's, or the next size (and
    predict) would rebuild the head with the schema's default dropouts instead of the recipe's."""
    from pipeline.recipe import defaults as recipe_defaults

    model = build_classifier("resnet18", "none", n_classes=2, ps=[0.1, 0.25])
    params = recipe_defaults.complete({"arch": "resnet18", "size": 32}, ("model.arch", "transforms"))
    save_checkpoint(model, tmp_path / "model.pt", checkpoint_meta(params, ["a", "b"], "finetune", model, False, "0"))
    restored, meta = restore_model(tmp_path / "model.pt", "resnet18", ["a", "b"])
    assert meta["ps"] == [0.1, 0.25] and meta["xtra_fc"] == [512]
    assert [m.p for m in restored.head if isinstance(m, nn.Dropout)] == [0.1, 0.25]


def test_a_checkpoint_restores_either_library_bit_for_bit(classifier, tmp_path):
    arch = "resnet34" if isinstance(classifier.body, nn.Sequential) else "tf_efficientnet_lite0"
    classes = [f"c{i}" for i in range(120)]
    save_checkpoint(classifier, tmp_path / "model.pt", {"classes": classes, "arch": arch, "size": 32, "ps": 0.5,
                                                        "xtra_fc": [512]})
    restored, _ = restore_model(tmp_path / "model.pt", arch, classes)
    assert restored.body_groups == classifier.body_groups
    assert all(torch.equal(a, b) for a, b in zip(classifier.state_dict().values(), restored.state_dict().values()))


def test_a_frozen_fit_of_the_pretrained_body_leaves_its_weights_and_batchnorm_statistics_alone():
    from pipeline.train.fit import EpochLog, Phase, TensorBatches, run_fits
    from pipeline.compute.runtime import state_digest

    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", "packaged", n_classes=3)
    before = state_digest(model.body)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 3, (32,))
    model.freeze()
    train = TensorBatches(x, y, 8, True, torch.Generator().manual_seed(0))
    run_fits(Phase(name="frozen", model=model, train_batches=train,
                   valid_batches=TensorBatches(x, y, 8), device=torch.device("cpu"), log=EpochLog(None)),
             [{"lr": 1e-2, "n_cycle": 1, "cycle_len": 1}])
    assert state_digest(model.body) == before
    assert model.head[0].num_batches_tracked > 0  # the head's BatchNorm did learn


def test_a_frozen_fit_with_train_bn_moves_the_bodys_batchnorm_only():
    """fastai v2's train_bn, under AdamW: the body's BatchNorm learns the new images' statistics (and its scale and
    shift); every other weight of the frozen body stays as pretrained."""
    from pipeline.train.fit import EpochLog, OptimizerSpec, Phase, TensorBatches, run_fits

    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", "packaged", n_classes=3)
    before = {name: value.clone() for name, value in model.body.state_dict().items()}
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 3, (32,))
    model.freeze()
    model.train_bn(True)
    train = TensorBatches(x, y, 8, True, torch.Generator().manual_seed(0))
    run_fits(Phase(name="frozen", model=model, train_batches=train,
                   valid_batches=TensorBatches(x, y, 8), device=torch.device("cpu"), log=EpochLog(None),
                   optimizer_spec=OptimizerSpec("adamw", 0.01)),
             [{"lr": 1e-3, "n_cycle": 1, "cycle_len": 1}])
    batchnorm = {f"{name}.{key}" for name, module in model.body.named_modules() if isinstance(module, nn.BatchNorm2d)
                 for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    changed = {name for name, value in model.body.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == batchnorm


def test_precompute_gives_the_pretrained_bodys_pooled_features(tmp_path):
    """The precompute stage's activations equal max- and average-pooled maps of the body, computed by hand."""
    from pipeline.stages.precompute import precompute_activations

    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", "packaged", n_classes=3).eval()
    images = torch.rand(10, 3, 48, 48)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(10)), batch_size=4)
    precompute_activations(model, loader, tmp_path / "a.npy", torch.device("cpu"), False, "test")
    with torch.no_grad():  # in the stage's batches, layout (channels_last) and precision (fp32): the same arithmetic
        maps = [model.body.model.forward_features(batch.contiguous(memory_format=torch.channels_last))
                for batch in images.split(4)]
    by_hand = torch.cat([torch.cat([m.amax(dim=(2, 3)), m.mean(dim=(2, 3))], dim=1) for m in maps]).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), by_hand, rtol=1e-6, atol=1e-6)
