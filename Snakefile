# fast.ai lesson 2 as a reproducible workflow: `snakemake --cores all` runs the demo recipe end to end;
# `snakemake --cores all --configfile config/dogbreeds.yaml` runs the lesson's Dog Breed recipe on Kaggle's data.
from snakemake.utils import min_version

min_version("9.0")

# A --configfile is merged into the Snakefile's configfile key by key, so loading the demo recipe as well would leak
# its keys (its `demo:` data builder, say) into every other recipe: load it only when no recipe was given.
if not workflow.overwrite_configfiles:

    configfile: "config/demo.yaml"


report: "rules/report/workflow.rst"


include: "rules/recipe.smk"
include: "rules/common.smk"
include: "rules/prepare.smk"
include: "rules/features.smk"
include: "rules/finetune.smk"
include: "rules/results.smk"
include: "rules/tracking.smk"
include: "rules/sweep.smk"
include: "rules/package_plan.smk"
include: "rules/package.smk"
include: "rules/onstart.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
        tracked_run(),
