# Helpers shared by the rule files: paths, each stage's slice of the recipe, and the code each stage runs.
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the Snakefile may be run from anywhere (--directory, tests)

from pipeline.data import data_fingerprint
from pipeline.demo_folder import BUILT_MARKER, ownership_problem
from pipeline.deps import module_files

DATA = config["data_dir"]
OUT = config["out_dir"]
LAYOUT = config["data"]["layout"]
# A recipe with `demo:` builds its own data set into data_dir. Pointed at a folder of someone else's files, stop here,
# before any job is planned: no rule ever writes into a user's data (also with --forceall or -R demo_data).
DEMO = "demo" in config
if DEMO and (problem := ownership_problem(DATA)):
    raise WorkflowError(problem)
# The demo rule's only output: Snakemake deletes a job's outputs before rerunning it, so the data files themselves
# are never declared as outputs; the builder clears and rebuilds its own folder by itself.
DEMO_BUILT = f"{DATA}/{BUILT_MARKER}"
# The interpreter running Snakemake runs every stage, with this workflow's pipeline/ first on the path: no reliance
# on PATH or an activated environment. Kept out of params on purpose: a moved venv must not rerun anything.
PYTHON = shlex.quote(sys.executable)
STAGE_ENV = f"PYTHONPATH={shlex.quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}}"
GPU_JOBS = 0 if config["device"] == "cpu" else 1
# Parallel stages ask for many threads and Snakemake caps them at --cores (workflow.cores would make
# `snakemake --report` demand --cores too).
MAX_THREADS = 256


def out(path):
    return f"{OUT}/{path}"


def code(module):
    """The stage's module and every pipeline module it imports: an edit to any of them reruns the stage."""
    return module_files(module)


def as_params(**slice_):
    """One stage's slice of the recipe as canonical JSON: Snakemake reruns a job when this text changes."""
    return json.dumps(slice_, sort_keys=True)


def data_inputs():
    """The competition files a stage reads, per layout; for a demo recipe, the demo rule's completion mark."""
    if DEMO:
        return {"demo": DEMO_BUILT}
    if LAYOUT == "csv":
        return {"labels": f"{DATA}/labels.csv", "train": f"{DATA}/train", "test": f"{DATA}/test"}
    return {"train": f"{DATA}/train", "valid": f"{DATA}/valid", "test": f"{DATA}/test"}


SAMPLE_SUBMISSION = f"{DATA}/{config['data']['sample_submission']}"


def sample_submission():
    """sample_submission.csv as an input when the data set has one (the demo's arrives with its data, upstream)."""
    return [SAMPLE_SUBMISSION] if not DEMO and Path(SAMPLE_SUBMISSION).exists() else []


def sample_submission_flag():
    return f"--sample {shlex.quote(SAMPLE_SUBMISSION)}" if DEMO or sample_submission() else ""


def fingerprint():
    """Changes when any image under data_dir is replaced, added or removed (Snakemake alone would miss an image
    rewritten in place inside train/): a stat() per file, once per invocation. Data built by the demo rule is
    tracked by Snakemake itself."""
    return "built by rule demo_data" if DEMO else data_fingerprint(DATA)


DATA_FINGERPRINT = fingerprint()

# The slice of the recipe that says how to read the data set (split, image stats, resize).
DATA_LAYOUT = {"layout": LAYOUT, "suffix": config["data"]["suffix"]}
# Slices of the recipe shared by the torch stages.
RUNTIME = {"seed": config["seed"], "device": config["device"], "amp": config["amp"]}
LOADER = config["loader"]
TRANSFORMS = config["transforms"]
MODEL = config["model"]
HEAD = config["head"]
FINETUNE = config["finetune"]
RESIZED = out(f"resized/{config['images']['shorter_side']}")
ACTIVATIONS = out(f"activations/{HEAD['size']}")


def finetune_names():
    """One folder per progressive size, in order: 1_224, 2_299, ..."""
    return [f"{index}_{step['size']}" for index, step in enumerate(FINETUNE, start=1)]


def previous_checkpoint(name):
    names = finetune_names()
    position = names.index(name)
    return out("head/model.pt") if position == 0 else out(f"finetune/{names[position - 1]}/model.pt")


def final_checkpoint():
    names = finetune_names()
    return out(f"finetune/{names[-1]}/model.pt") if names else out("head/model.pt")


def finetune_params(wildcards):
    step = FINETUNE[finetune_names().index(wildcards.name)]
    return as_params(arch=MODEL["arch"], **step, **TRANSFORMS, **LOADER, **RUNTIME, **config["train"])
