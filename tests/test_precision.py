"""bf16 or float32 per model and phase (pipeline/compute/precision.py): what `amp` forces, what `auto` decides where,
the measurement kept per machine, arch, size, batch size and threads, and how the stages use the two answers.

Every test here holds on a CPU with native bf16 and on one without: the hardware question is monkeypatched, and the
measurement is faked except where a test measures a tiny network for real."""
import json
from argparse import Namespace

import pytest
import torch

from conftest import tiny_problem
from pipeline.compute import distributed, precision, runtime
from pipeline.compute.precision import Precision
from pipeline.models import backbones
from pipeline.stages import predict, tta
from pipeline.train import fit
from pipeline.train.fit import EpochLog, FitSpec, Phase

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
# The figures (native-bf16 CPU, batch 32, 2 threads): Lite0 at 72 px trains faster in float32 and predicts
# faster in bf16.
LITE0_72 = {"train": {"fp32": 176.0, "bf16": 114.0}, "infer": {"fp32": 635.0, "bf16": 960.0}}
PROBE = {"arch": "tf_efficientnet_lite0", "size": 72, "batch_size": 32, "threads": 2}


class FakeProbe:
    """Stands for precision.measure: counts its calls and returns `rates`, its threads having waited for a CPU
    `waited` of the time."""

    def __init__(self, rates=LITE0_72, waited=0.01):
        self.rates, self.waited, self.calls = rates, waited, []

    def __call__(self, arch, size, batch_size, threads):
        self.calls.append((arch, size, batch_size, threads))
        return {"img_per_s": self.rates, "waited_for_cpu": self.waited}


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """A CPU with native bf16, a faked measurement and an empty cache folder of the test's own."""
    fake = FakeProbe()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "measure", fake)
    monkeypatch.setattr(precision, "CACHE_DIR", tmp_path / "cache")
    return fake


def never_measure(*args, **kwargs):
    raise AssertionError("measured where nothing needs measuring")


@pytest.mark.parametrize("native_bf16", [False, True])
@pytest.mark.parametrize("device", [CPU, CUDA])
def test_on_and_off_force_both_phases_without_measuring(monkeypatch, native_bf16, device):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(precision, "measure", never_measure)
    for amp, bf16 in (("on", True), ("off", False)):
        chosen = precision.choose(amp=amp, device=device, **PROBE)
        assert (chosen.train, chosen.infer) == (bf16, bf16)
        assert f"amp {amp}" in chosen.reason


def test_auto_on_a_gpu_is_bf16_for_both_without_measuring(monkeypatch):
    monkeypatch.setattr(precision, "measure", never_measure)
    chosen = precision.choose(amp="auto", device=CUDA, **PROBE)
    assert (chosen.train, chosen.infer) == (True, True) and "GPU" in chosen.reason


def test_auto_on_a_cpu_without_native_bf16_is_float32_for_both_without_measuring(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision, "measure", never_measure)
    chosen = precision.choose(amp="auto", device=CPU, cache_dir=tmp_path, **PROBE)
    assert (chosen.train, chosen.infer) == (False, False) and "without native bf16" in chosen.reason
    assert list(tmp_path.iterdir()) == []


def test_auto_on_a_cpu_with_native_bf16_measures_once_and_keeps_the_answer(probe, tmp_path):
    chosen = precision.choose(amp="auto", device=CPU, **PROBE)
    assert (chosen.train, chosen.infer) == (False, True)  # Lite0 at 72 px: trains in float32, predicts in bf16
    assert probe.calls == [("tf_efficientnet_lite0", 72, 32, 2)]
    assert precision.choose(amp="auto", device=CPU, **PROBE) == chosen
    assert len(probe.calls) == 1  # the second answer came from the cache
    [kept] = (tmp_path / "cache").iterdir()
    figures = json.loads(kept.read_text())
    assert figures["img_per_s"] == LITE0_72 and figures["waited_for_cpu"] == 0.01
    assert figures["torch"] == torch.__version__
    assert {"cpu", "avx512_bf16", "amx", "version"} <= figures.keys()


@pytest.mark.parametrize("change", [{"size": 96}, {"arch": "resnet34"}, {"threads": 1}, {"batch_size": 64}])
def test_another_size_arch_thread_count_or_batch_size_is_measured_apart(probe, tmp_path, change):
    precision.choose(amp="auto", device=CPU, **PROBE)
    precision.choose(amp="auto", device=CPU, **{**PROBE, **change})
    assert len(probe.calls) == 2 and len(list((tmp_path / "cache").iterdir())) == 2


def test_a_newer_probe_or_another_torch_does_not_trust_an_older_answer(probe, monkeypatch):
    precision.choose(amp="auto", device=CPU, **PROBE)
    monkeypatch.setattr(precision, "PROBE_VERSION", precision.PROBE_VERSION + 1)
    precision.choose(amp="auto", device=CPU, **PROBE)
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    precision.choose(amp="auto", device=CPU, **PROBE)
    assert len(probe.calls) == 3


def test_an_answer_another_process_kept_meanwhile_stands(probe, monkeypatch):
    """Two jobs measuring the same key at once: the answer kept first is the one both go on with."""
    others = {"train": {"fp32": 10.0, "bf16": 20.0}, "infer": {"fp32": 10.0, "bf16": 20.0}}

    def measured_while_another_job_kept_its_answer(arch, size, batch_size, threads):
        monkeypatch.setattr(precision, "measure", FakeProbe(others))
        precision.choose(amp="auto", device=CPU, **PROBE)  # the other job, finishing first
        return {"img_per_s": LITE0_72, "waited_for_cpu": 0.0}

    monkeypatch.setattr(precision, "measure", measured_while_another_job_kept_its_answer)
    chosen = precision.choose(amp="auto", device=CPU, **PROBE)
    assert (chosen.train, chosen.infer) == (True, True)  # the other job's answer; its own would be (False, True)


@pytest.mark.parametrize("fp32, bf16, chosen", [
    (100.0, 110.0, True),   # 10 % faster: bf16
    (100.0, 109.0, False),  # less: float32, whose precision comes free
    (100.0, 100.0, False),  # a tie goes to float32
    (100.0, 60.0, False),
])
def test_bf16_only_where_it_is_at_least_ten_percent_faster(probe, fp32, bf16, chosen):
    probe.rates = {"train": {"fp32": fp32, "bf16": bf16}, "infer": {"fp32": bf16, "bf16": fp32}}
    picked = precision.choose(amp="auto", device=CPU, **PROBE)
    assert picked.train == chosen
    assert picked.infer == (fp32 / bf16 >= 1.1)  # the same rule, the figures swapped


def test_the_log_line_says_the_choice_and_the_figures_behind_it(probe, capsys):
    params = {"amp": "auto", "arch": "tf_efficientnet_lite0", "size": 72, "batch_size": 32}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        chosen = runtime.chosen_precision(params, CPU)
    finally:
        torch.set_num_threads(threads)
    line = capsys.readouterr().out.strip()
    assert line == str(chosen)
    assert line.startswith("precision: training fp32, inference bf16 (amp auto, measured on this CPU for "
                           "tf_efficientnet_lite0 at 72 px, batch 32, 2 threads: training 176 vs 114 img/s fp32/bf16, "
                           "inference 635 vs 960 img/s; bf16 where at least 10% faster; cached ")
    assert line.endswith(f"cached {next(precision.CACHE_DIR.iterdir())})")


@pytest.mark.parametrize("waited, busy", [(0.05, False), (None, False), (0.52, True)])
def test_an_answer_measured_on_a_busy_machine_says_so_and_how_to_measure_again(probe, waited, busy):
    probe.waited = waited
    reason = precision.choose(amp="auto", device=CPU, **PROBE).reason
    assert ("other processes held the CPUs (its threads waited for one 52% of the time)" in reason
            and "delete the file to measure again" in reason) == busy


@pytest.mark.parametrize("arch", ["resnet18", "timm/resnet18", "tf_efficientnet_lite0"])
def test_the_probe_builds_an_arch_from_the_library_the_stages_build_it_from(arch):
    library = type(precision.probe_network(arch)).__module__.split(".")[0]
    assert library == backbones.resolve(arch).source


def test_a_real_measurement_gives_both_rates_of_both_phases_and_leaves_the_stage_as_it_was():
    threads = torch.get_num_threads()
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    measured = precision.measure(arch="squeezenet1_1", size=32, batch_size=2, threads=threads)
    assert torch.equal(torch.rand(3), expected)  # the stage's random numbers are drawn as without the probe
    assert torch.get_num_threads() == threads
    rates = measured["img_per_s"]
    assert set(rates) == {"train", "infer"}
    assert all(set(pair) == {"fp32", "bf16"} and min(pair.values()) > 0 for pair in rates.values())
    assert measured["waited_for_cpu"] is None or 0 <= measured["waited_for_cpu"] <= 1


def test_a_phase_trains_in_its_training_precision_and_validates_in_its_inference_one(monkeypatch):
    seen = {"train_step": set(), "evaluate": set()}

    def train_step(**kwargs):
        seen["train_step"].add(kwargs["amp"])
        return 0.5

    def evaluate(model, batches, device, amp=False):
        seen["evaluate"].add(amp)
        return 0.5, 1.0

    monkeypatch.setattr(fit, "train_step", train_step)
    monkeypatch.setattr(fit, "evaluate", evaluate)
    model, train, valid = tiny_problem()
    phase = Phase(name="t", model=model, train_batches=train, valid_batches=valid, device=CPU, log=EpochLog(None),
                  precision=Precision(train=True, infer=False, reason="test"))
    fit.fit(phase, FitSpec(1e-3, 1), 0)
    assert seen == {"train_step": {True}, "evaluate": {False}}


def test_deterministic_tta_predicts_in_float32_whatever_amp_says_and_random_tta_as_chosen(monkeypatch, capsys):
    monkeypatch.setattr(precision, "measure", never_measure)
    params = {"amp": "on", "arch": "resnet18", "size": 32, "batch_size": 8}
    assert not tta.passes_amp({**params, "mode": "deterministic"}, CPU)
    assert "inference fp32 (amp on, but deterministic TTA" in capsys.readouterr().out
    assert tta.passes_amp({**params, "mode": "random"}, CPU)
    assert "precision: training bf16, inference bf16 (amp on)" in capsys.readouterr().out


@pytest.mark.parametrize("meta_amp, flag, expected", [
    (True, None, "on"), (False, None, "off"), (None, None, "auto"), (False, "auto", "auto"), (True, "off", "off")])
def test_predict_asks_for_the_checkpoints_precision_unless_told(meta_amp, flag, expected):
    meta = {"arch": "resnet18", "size": 32, **({} if meta_amp is None else {"amp": meta_amp})}
    settings = predict.run_settings(meta, Namespace(amp=flag, device="cpu", batch_size=8))
    assert settings["amp"] == expected
    assert (settings["arch"], settings["size"], settings["batch_size"]) == ("resnet18", 32, 8)


def test_outside_torchrun_the_main_ranks_answer_is_ones_own():
    assert distributed.from_main(Precision(True, False, "x")) == Precision(True, False, "x")
