"""Backbones by name from torchvision and timm, their weights (packaged, hub caches, local files) and every way a
recipe's arch or weights can be wrong."""
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import models

from pipeline.models import backbones
from pipeline.workflow.backbone_check import BackboneProblem, checked_backbone
from pipeline.models.backbones import WeightsError
from pipeline.models.classifier import build_classifier
from pipeline.data.transforms import valid_transform

LITE0 = backbones.resolve("tf_efficientnet_lite0")


@pytest.mark.parametrize("arch, source, name", [
    ("resnet34", "torchvision", "resnet34"),                     # in both libraries: torchvision's, the lesson's
    ("timm/resnet34", "timm", "resnet34"),                       # the prefix picks timm's
    ("tf_efficientnet_lite0", "timm", "tf_efficientnet_lite0"),
    ("convnext_tiny.fb_in22k_ft_in1k", "timm", "convnext_tiny.fb_in22k_ft_in1k"),  # a pretrained tag
])
def test_a_name_resolves_to_one_library(arch, source, name):
    assert backbones.resolve(arch) == backbones.Backbone(arch, source, name)


def test_an_unknown_arch_names_close_ones():
    with pytest.raises(WeightsError, match=r"'resnet19' is neither.*close names: resnet18"):
        backbones.resolve("resnet19")
    with pytest.raises(WeightsError, match="timm has no model 'resnet19'"):
        backbones.resolve("timm/resnet19")


def test_preprocessing_comes_from_timms_pretrained_config_and_torchvisions_imagenet_statistics():
    assert backbones.preprocessing(LITE0) == {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    assert backbones.preprocessing(backbones.resolve("resnet34")) == {
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}


@pytest.fixture(scope="module")
def packaged_lite0():
    return backbones.create(LITE0, "packaged").eval()


def test_the_packaged_weights_are_imagenets(packaged_lite0):
    """scikit-image's bundled photos get their ImageNet classes: 281-285 are the cats, 967 espresso, 657 missile
    (744 projectile)."""
    data = pytest.importorskip("skimage.data")
    transform = valid_transform(224, preprocessing=backbones.preprocessing(LITE0))
    with torch.no_grad():
        predicted = {name: int(packaged_lite0(transform(Image.fromarray(getattr(data, name)()))[None]).argmax())
                     for name in ("chelsea", "coffee", "rocket")}
    assert 281 <= predicted["chelsea"] <= 285
    assert predicted["coffee"] == 967
    assert predicted["rocket"] in (657, 744)


def test_the_packaged_tensors_are_placed_by_name_whatever_their_order(packaged_lite0):
    source = backbones.read_state_dict(backbones.packaged_file(LITE0))
    shuffled = list(source.items())
    random.Random(0).shuffle(shuffled)
    converted = backbones.packaged_state_dict(backbones.create(LITE0, "none"), dict(shuffled))
    expected = packaged_lite0.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[key], expected[key]) for key in expected)


def test_a_packaged_tensor_of_the_wrong_shape_is_named():
    source = backbones.read_state_dict(backbones.packaged_file(LITE0))
    source["_blocks.3._expand_conv.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(WeightsError, match=r"_blocks\.3\._expand_conv\.weight \(1, 1, 1, 1\).*blocks\.2\.0\.conv_pw"):
        backbones.packaged_state_dict(backbones.create(LITE0, "none"), source)


def test_packaged_weights_for_an_arch_no_package_ships_are_refused():
    with pytest.raises(WeightsError, match="no package ships weights for resnet18"):
        backbones.create(backbones.resolve("resnet18"), "packaged")


def test_timm_imagenet_weights_load_from_its_hugging_face_cache(tmp_path, monkeypatch, packaged_lite0):
    """timm's own pretrained loading, offline, from a cache laid out as huggingface_hub lays it out."""
    from safetensors.torch import save_file

    repo = tmp_path / "hub" / "models--timm--tf_efficientnet_lite0.in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in packaged_lite0.state_dict().items()},
              repo / "snapshots" / ("0" * 40) / "model.safetensors")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    loaded = backbones.create(LITE0, "imagenet")
    assert torch.equal(loaded.conv_stem.weight, packaged_lite0.conv_stem.weight)
    assert backbones.weights_file(LITE0, "imagenet") == repo / "snapshots" / ("0" * 40) / "model.safetensors"


def test_missing_timm_weights_offline_name_the_model_the_file_and_where_it_goes(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError) as error:
        backbones.create(LITE0, "imagenet")
    message = str(error.value)
    assert "tf_efficientnet_lite0" in message and "model.safetensors" in message
    assert str(tmp_path / "hub" / "models--timm--tf_efficientnet_lite0.in1k") in message


@pytest.mark.parametrize("content, message", [
    (b"these are not weights\n", "is not a torch state dict"),
    ("bare tensor", "holds a Tensor, not a state dict"),
    ("truncated", "is not a torch state dict"),
])
def test_a_bad_weights_file_is_named_with_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "w.pth"
    if content == "bare tensor":
        torch.save(torch.zeros(3), path)
    elif content == "truncated":
        torch.save(models.resnet18().state_dict(), path)
        path.write_bytes(path.read_bytes()[:100_000])
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=f"{path}.*{message}"):
        backbones.create(backbones.resolve("resnet18"), str(path))


def test_an_unknown_torchvision_enum_member_lists_the_real_ones():
    with pytest.raises(WeightsError, match="'IMAGENET1K_V9': resnet18 has IMAGENET1K_V1"):
        backbones.create(backbones.resolve("resnet18"), "IMAGENET1K_V9")


@pytest.mark.parametrize("arch", ["swin_t", "timm/vit_tiny_patch16_224"])
def test_a_body_whose_features_are_not_an_nchw_map_is_refused(arch):
    with pytest.raises(WeightsError, match=f"{arch}: its body"):
        build_classifier(arch, "none", n_classes=3)


def test_a_channels_last_timm_body_is_turned_to_nchw():
    model = build_classifier("convnext_atto", "none", n_classes=3)  # NCHW already; output_fmt unset
    assert model.n_features == 2 * 320
    assert not model.body.channels_last_output


def test_the_check_is_kept_until_the_weights_file_changes(tmp_path):
    """The plan-time check remembers its answer; a file replaced at the same path is digested anew."""
    weights = tmp_path / "w.pth"
    torch.save(models.resnet18().state_dict(), weights)
    first = checked_backbone("resnet18", str(weights), tmp_path / "cache")
    assert checked_backbone("resnet18", str(weights), tmp_path / "cache") == first
    torch.manual_seed(1)
    torch.save(models.resnet18().state_dict(), weights)
    second = checked_backbone("resnet18", str(weights), tmp_path / "cache")
    assert second["weights_digest"] != first["weights_digest"]
    cached = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert cached["weights_digest"] == second["weights_digest"]
    weights.write_text("garbage")
    with pytest.raises(BackboneProblem, match="is not a torch state dict"):
        checked_backbone("resnet18", str(weights), tmp_path / "cache")


def test_the_check_describes_the_packaged_backbone(tmp_path):
    described = checked_backbone("tf_efficientnet_lite0", "packaged", tmp_path)
    assert described["source"] == "timm"
    assert described["preprocessing"]["interpolation"] == "bicubic"
    assert Path(described["weights_file"]).name == "efficientnet-lite0-57934424.pth"
    assert len(described["weights_digest"]) == 16
