# After the results: the run logged to MLflow (tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in
# the directory Snakemake runs in; `none` turns it off). Its inputs are the run's results, so a run that changed no
# result logs nothing, and one that reran TTA logs one new run.

TRACKING_URI = tracking_store.store_uri(config["tracking"]["uri"])
TRACKING_MARK = out(tracking_store.MARK)
# The whole recipe reaches the tracking stage on its command line, and only its digest is a param: an edit still
# reruns the rule, and Snakemake's reason names a digest instead of printing two whole recipes.
TRACKED_RECIPE = json.dumps(config, sort_keys=True)


def tracked_run():
    """What `rule all` asks of tracking: the rule's mark and pages, or nothing with tracking off."""
    return rules.track.output if TRACKING_URI else []


def training_files():
    """Every model's per-epoch log (log.csv, the curves the run logs) and plots, of the head and of each fine-tune
    size."""
    stages = {name: ["head"] + [f"finetune/{step}" for step in chain.finetune_names()] for name, chain in CHAINS.items()}
    return [path for name, folders in stages.items() for folder in folders
            for file in ("log.csv", "curves.png", "lr_schedule.png", "batch_loss.png")
            for path in for_every_model(model_out(f"{folder}/{file}"), name)]


def result_plots():
    """The report's figures that `rule all` reaches only through other files: the data's, calibration's, the
    out-of-fold ones of each member (or of the K-fold run) and each blend's folds."""
    plots = [rules.image_stats.output.plot_all, rules.image_stats.output.plot_small, rules.calibrate.output.plot]
    oof_plots = [member_out("plots/cv_folds.png"), member_out("plots/oof_confusion_matrix.png")] if KFOLD else []
    plots += for_every_model_level(oof_plots) if MEMBER_NAMES else oof_plots
    return plots + [out(f"{blend}/cv_folds.png") for blend in BLENDS]


def tracked_models():
    """Each model's member, fold and folder, for the tracking rule's nested runs."""
    if not KFOLD:
        return [{"member": None, "fold": None, "dir": OUT}]
    members = MODEL_CHAINS or [None]
    return [{"member": member, "fold": fold, "dir": MODEL_DIR.format(member=member, fold=fold)}
            for member in members for fold in FOLDS]


def final_checkpoints():
    return [path for name, chain in CHAINS.items() for path in for_every_model(chain.final_checkpoint(), name)]


if TRACKING_URI:
    # A logging that failed left a mark saying so: removing it plans the rule again, so that this run retries.
    tracking_store.forget_failed_attempt(TRACKING_MARK)

    localrules:
        track,

    rule track:
        """Logs this run to MLflow: the recipe, the headline figures, every training stage's curves, each fold and
        member as a nested run, the results' files. A store it cannot reach costs one warning line, never the run."""
        input:
            results=final_outputs(),
            training=training_files(),
            plots=result_plots(),
            model_metrics=for_every_model(model_out("metrics.json")),
            calibration=rules.calibrate.output.report,
            pseudo_labels=expand(model_out("pseudo_labels.json"), member=STUDENT, fold=FOLDS) if STUDENT else [],
            checkpoints=final_checkpoints() if config["tracking"]["log_models"] else [],
            code=code("track"),
        output:
            mark=TRACKING_MARK,
            runs=report(out("tracking/runs.html"), caption=caption("tracked_runs"), category="3. Results",
                        subcategory="tracked runs"),
        params:
            p=as_params(uri=TRACKING_URI, experiment=tracking_store.experiment_name(config),
                        log_models=config["tracking"]["log_models"], scope="oof" if KFOLD else "valid",
                        recipe_digest=hashlib.sha256(TRACKED_RECIPE.encode()).hexdigest()[:16],
                        models=tracked_models(),
                        member_dirs={name: MEMBER_DIR.format(member=name) for name in MODEL_CHAINS},
                        checkpoints=final_checkpoints() if config["tracking"]["log_models"] else []),
        log:
            out("logs/track.log"),
        benchmark:
            out("benchmarks/track.tsv")
        shell:
            stage_shell(
                "track",
                "--files {input.results:q} {input.training:q} {input.plots:q} {input.model_metrics:q} {input.calibration:q} "
                "{input.pseudo_labels:q} {input.checkpoints:q} --recipe {TRACKED_RECIPE:q} --mark {output.mark:q} "
                "--params {params.p:q}",
            )
