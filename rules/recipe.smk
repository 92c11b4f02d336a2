# The recipe, checked before any job is planned (each problem names its key, file or row), and what the rules derive
# from it: the data, the folds, the members' chains.
import json
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the Snakefile may be run from anywhere (--directory, tests)

from pipeline.cli import debugging
from pipeline.data.demo_folder import BUILT_MARKER
from pipeline.recipe import files as recipe_files
from pipeline.recipe import members
from pipeline.tracking import store as tracking_store
from pipeline.workflow import recipe_check
from pipeline.workflow.chain import Chain, share_work


def stop_on(problems, heading="the recipe cannot run"):
    """Stop, listing every problem found (each names its key, file, row or rule)."""
    if problems:
        stop(f"{heading}:\n" + "\n".join(f"  - {problem}" for problem in problems))


def stop(message):
    """Planning ends with the message alone and exit status 1: what is wrong is the recipe, not this file, so no
    location in it; LESSON2_DEBUG=1 raises Snakemake's WorkflowError instead, with where it was raised."""
    if debugging(False):
        raise WorkflowError(message)
    print(message, file=sys.stderr, flush=True)
    sys.exit(1)


# The recipe files as written (no key twice: YAML would keep the last silently), then the whole recipe, checked by
# the same function the recipe fuzzer calls in process; config gets the schema's defaults, the one home of each.
RECIPE_SOURCES, RECIPE_FILE_PROBLEMS = recipe_files.read_all(workflow.configfiles)
stop_on(RECIPE_FILE_PROBLEMS, "the recipe files cannot be read as written")
try:
    CHECKED = recipe_check.checked(config, RECIPE_SOURCES)
except recipe_check.RecipeRefused as refused:
    stop(str(refused))
config.update(CHECKED.recipe)
FOLDS = CHECKED.folds

DATA = config["data_dir"]
OUT = config["out_dir"]
LAYOUT = config["data"]["layout"]
# A recipe with `demo:` builds its own data set into data_dir; pointed at a folder of someone else's files, the check
# above stops before any job is planned: no rule ever writes into a user's data (also with --forceall or -R demo_data).
DEMO = "demo" in config
# The demo rule's only output: Snakemake deletes a job's outputs before rerunning it, so the data files themselves
# are never declared as outputs; the builder clears and rebuilds its own folder by itself.
DEMO_BUILT = f"{DATA}/{BUILT_MARKER}"
DEMO_SETTINGS = ("n_labeled", "n_test", "seed", "large_fraction")  # the demo builder's flags, besides its classes
DEVICES = config["devices"]
# The GPUs a torch job holds, for Snakemake's --resources gpu=N and Slurm's --gpus: none on CPU, one per process.
GPU_JOBS = 0 if config["device"] == "cpu" else 1
TRAINING_GPUS = GPU_JOBS * DEVICES
# What every stage runs with, for `--sdm conda` and for a reader: the one environment of `make setup`.
ENVIRONMENT = "../environment.yml"
# Parallel stages ask for many threads and Snakemake caps them at --cores (workflow.cores would make
# `snakemake --report` demand --cores too).
MAX_THREADS = 256


SAMPLE_SUBMISSION = f"{DATA}/{config['data']['sample_submission']}"


def fingerprint():
    """Changes when any image under data_dir is replaced, added or removed (Snakemake alone would miss an image
    rewritten in place inside train/): a stat() per file, once per invocation. Data built by the demo rule is
    tracked by Snakemake itself."""
    return "built by rule demo_data" if DEMO else CHECKED.data_scan.fingerprint


DATA_FINGERPRINT = fingerprint()


KFOLD = bool(FOLDS)
MEMBER_NAMES = members.names(config)
STUDENT = CHECKED.student  # the pseudo-label round's students, as one more member; None without it
# Where one model's chain (split, activations, head, fine-tune sizes, TTA) lives: out_dir for a single split,
# out_dir/folds/<k> for each fold of a K-fold run, so every fold folder holds what a single-split run holds; with
# members, each member's folds and out-of-fold predictions (or its one model, on a single split) under
# out_dir/members/<name>.
MEMBER_DIR = f"{OUT}/members/{{member}}" if MEMBER_NAMES else OUT
MODEL_DIR = f"{MEMBER_DIR}/folds/{{fold}}" if KFOLD else MEMBER_DIR


wildcard_constraints:
    fold=r"\d+",
    member=r"[A-Za-z][A-Za-z0-9_]*(-pseudo)?",


# How the report names one model's figures: its fold, and its member when there are several (None: the one model
# of a single split).
MODEL_LABEL = ", ".join(["{member}"] * bool(MEMBER_NAMES) + ["fold {fold}"] * KFOLD) or None
# The blends of a K-fold recipe with members: the members' (the pseudo-label round's teacher), then with the
# pseudo-label round the members' and the students'. The last one is what calibrate, interpret and the submission
# use. On a single split members are trained and scored side by side (a sweep's trials) and not blended: the first
# member's predictions are the recipe's.
BLENDS = (["blend", "blend_pseudo"] if STUDENT else ["blend"]) if MEMBER_NAMES and KFOLD else []
FINAL_BLEND = BLENDS[-1] if BLENDS else None


# Each chain's recipe and backbone, checked above: the backbone's preprocessing reaches every stage that shows it
# images, and the digest of its weights file's content keys precompute and everything after it.
# Members whose chains agree up to a stage share its outputs (pipeline.workflow.chain.share_work).
if MEMBER_NAMES:
    CHAINS = {
        name: Chain(recipe, backbone, OUT, MODEL_DIR, DEVICES, name)
        for name, (recipe, backbone) in CHECKED.chains.items()
    }
    share_work(CHAINS, apart=(STUDENT,))
    PRIMARY_NAME = MEMBER_NAMES[0]  # what the stages after the blend show images with (preview, interpret)
else:
    CHAINS = {None: Chain(config, CHECKED.backbone, OUT, MODEL_DIR, DEVICES)}
    PRIMARY_NAME = None
PRIMARY = CHAINS[PRIMARY_NAME]
MODEL_CHAINS = [name for name in CHAINS if name is not None]  # every member, the students last; [] without members

# The fine-tune sizes that run lr_find in any chain: the lr_find rule's names.
LR_FIND_NAMES = sorted({name for c in CHAINS.values() for name in c.lr_find_names()})
# The TTA passes calibrate weighs: a blend's passes are one blended prediction twice (no augmented passes to weigh).
CALIBRATION_N_AUG = 0 if BLENDS else PRIMARY.tta["n_aug"]

# After the results: the run logged to MLflow (tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in
# the directory Snakemake runs in; `none` turns it off).
TRACKING_URI = tracking_store.store_uri(config["tracking"]["uri"])
TRACKING_MARK = f"{OUT}/{tracking_store.MARK}"
# The whole recipe reaches the tracking stage on its command line, and only its digest is a param: an edit still
# reruns the rule, and Snakemake's reason names a digest instead of printing two whole recipes.
TRACKED_RECIPE = json.dumps(config, sort_keys=True)
