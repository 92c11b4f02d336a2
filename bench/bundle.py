"""Benchmark - the offline bundle on the demo (issue 31): how long `snakemake package` takes, the export per model,
and predict.py (fp32, int8) against the pipeline's TTA stage doing the same passes on the same test images.

Runs the demo recipe end to end in a scratch folder (tracking off: it is not what is measured), then `snakemake
package` with `package: {quantize: int8}` from an empty export cache (Snakemake's benchmark file times the job), then
alternates, `--repeats` times:
  - the TTA stage's own work on the test images: `pipeline.predict.inference.tta_log_probs` over the resize cache, the run's
    checkpoint, in float32 as deterministic TTA runs, and under bf16 autocast for reference (where the CPU has native
    bf16, what the stage would take if it autocast);
  - the bundle's predict.py as a notebook runs it (a subprocess: start-up, reading and resizing the raw test images,
    every view, the calibrated submission), with fp32 and with int8 models.
Goals: the fp32 bundle at least as fast as the TTA stage on a CPU without native bf16 (the float32 figure), the
bundle made in under a minute, and the int8 models' log-loss cost next to their speed.

    python bench/bundle.py [--repeats 3] [--threads 2] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, report

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "config" / "demo.yaml"


def snakemake(workdir: Path, *args: str, overrides: Path) -> float:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "all", *args, "--configfile", str(DEMO), str(overrides)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stdout[-3000:] + result.stderr[-3000:])
    return time.perf_counter() - started


def tta_stage_seconds(out: Path, threads: int, amp: bool) -> tuple[float, int]:
    """The TTA stage's inference on the test images, in this process: (seconds, images)."""
    import pandas as pd
    import torch

    from pipeline.compute import runtime
    from pipeline.predict.inference import tta_log_probs
    from pipeline.models.classifier import restore_model
    from pipeline.recipe.defaults import defaults

    torch.set_num_threads(threads)
    checkpoint = sorted((out / "finetune").glob("*/model.pt"))[-1]
    meta = torch.load(checkpoint, weights_only=True)["meta"]
    model, meta = restore_model(checkpoint, meta["arch"], meta["classes"])
    model = runtime.on_device(model, torch.device("cpu"))
    test = pd.read_csv(out / "test.csv", dtype={"id": str})
    test = test[test["usable"]]
    recipe_tta = json.loads((out / "metrics.json").read_text())
    params = {**defaults(("seed", "transforms", "loader", "tta")), "n_aug": recipe_tta["n_aug"],
              "mode": "deterministic",
              "augmentation": meta["images"]["augmentation"], "max_zoom": meta["images"]["max_zoom"],
              "size": meta["size"], "preprocessing": meta["images"]["preprocessing"], "batch_size": 32}
    started = time.perf_counter()
    tta_log_probs(model, test, str(out / "resized" / str(meta["images"]["shorter_side"])), params,
                  torch.device("cpu"), amp, "test")
    return time.perf_counter() - started, len(test)


def bundle_seconds(workdir: Path, models: str, threads: int) -> tuple[float, float]:
    """predict.py end to end as a subprocess: (wall seconds, the images/s it printed)."""
    bundle = workdir / "outputs" / "demo" / "package"
    command = [sys.executable, str(bundle / "predict.py"), str(workdir / "data" / "demo" / "test"), "--out",
               str(workdir / f"bundle_{models}.csv"), "--models", models, "--threads", str(threads),
               "--sample", str(workdir / "data" / "demo" / "sample_submission.csv")]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(result.stderr[-3000:])
    return seconds, float(re.search(r"([\d.]+) images/s", result.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="reuse a folder where this benchmark ran before")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-bundle-"))
    overrides = workdir / "bench.yaml"
    overrides.write_text("tracking: {uri: none}\npackage: {quantize: int8}\n")
    demo_seconds = snakemake(workdir, overrides=overrides)
    out = workdir / "outputs" / "demo"
    subprocess.run(["rm", "-rf", str(out / "onnx_cache"), str(out / "package")], check=True)
    package_wall = snakemake(workdir, "package", overrides=overrides)
    package_job = float((out / "benchmarks" / "package.tsv").read_text().splitlines()[1].split()[0])
    log = (out / "logs" / "package.log").read_text()
    exports = [float(seconds) for seconds in re.findall(r"exported from .* in ([\d.]+)s", log)]
    manifest = json.loads((out / "package" / "manifest.json").read_text())

    from pipeline.compute.precision import cpu_has_native_bf16

    stage_amp = cpu_has_native_bf16()  # where bf16 can be faster: the TTA stage is timed in both
    timings = {"tta_stage_bf16": [], "tta_stage_fp32": [], "bundle_fp32": [], "bundle_int8": []}
    rates = {"bundle_fp32": [], "bundle_int8": []}
    n_images = 0
    for _ in range(args.repeats):
        if stage_amp:
            timings["tta_stage_bf16"].append(tta_stage_seconds(out, args.threads, True)[0])
        seconds, n_images = tta_stage_seconds(out, args.threads, False)
        timings["tta_stage_fp32"].append(seconds)
        for models in ("fp32", "int8"):
            seconds, rate = bundle_seconds(workdir, models, args.threads)
            timings[f"bundle_{models}"].append(seconds)
            rates[f"bundle_{models}"].append(rate)
    median = {name: statistics.median(values) for name, values in timings.items() if values}
    int8 = manifest["int8"]
    figures = {"workdir": str(workdir), "demo_seconds": round(demo_seconds, 1), "test_images": n_images,
               "views": len(manifest["members"][0]["input"]["views"]), "native_bf16": stage_amp,
               "package_job_seconds": package_job, "package_wall_seconds": round(package_wall, 1),
               "export_seconds_per_model": exports, "check": manifest["checked_against_run"],
               "timings": timings, "medians": median, "bundle_images_per_s": rates,
               "int8": {key: int8[key] for key in ("scope", "fp32_logloss", "int8_logloss", "fp32_accuracy",
                                                   "int8_accuracy", "fp32_images_per_s", "int8_images_per_s")}}
    print(json.dumps(figures))
    print(f"package from an empty export cache: job {package_job:.1f} s (goal < 60), export "
          f"{', '.join(f'{s:.1f}' for s in exports)} s per model; check: largest difference "
          f"{manifest['checked_against_run']['max_difference']:.2g} against the run's submission")
    bf16 = f", {median['tta_stage_bf16']:.2f} s under bf16 autocast" if stage_amp else ""
    print(f"{n_images} test images x {figures['views']} views, medians of {args.repeats}: TTA stage "
          f"{median['tta_stage_fp32']:.2f} s (float32, as deterministic TTA runs){bf16}; bundle fp32 "
          f"{median['bundle_fp32']:.2f} s, int8 {median['bundle_int8']:.2f} s (end to end, raw images)")
    print(f"int8 against fp32 ({int8['scope']}): log loss {int8['int8_logloss']:.4f} against "
          f"{int8['fp32_logloss']:.4f}, {int8['int8_images_per_s']:.0f} against {int8['fp32_images_per_s']:.0f} "
          f"images/s; {machine()}")
    ratio = median["tta_stage_fp32"] / median["bundle_fp32"]
    report("bundle", {"package_job_seconds": package_job}, ratio,
           "fp32 bundle >= 1x the float32 TTA stage's speed; package < 60 s",
           ratio >= 1 and package_job < 60)


if __name__ == "__main__":
    main()
