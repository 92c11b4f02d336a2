# After the results: the run logged to MLflow (tracking.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in
# the directory Snakemake runs in; `none` turns it off). Its inputs are the run's results, so a run that changed no
# result logs nothing, and one that reran TTA logs one new run.

if TRACKING_URI:
    # A logging that failed left a mark saying so: removing it plans the rule again, so that this run retries.
    tracking_store.forget_failed_attempt(TRACKING_MARK)

    localrules:
        track,

    rule track:
        """Logs this run to MLflow: the recipe, the headline figures, every training stage's curves, each fold and
        member as a nested run, the results' files. A store it cannot reach costs one warning line, never the run.
        """
        input:
            results=final_outputs(),
            training=training_files(),
            plots=result_plots(),
            model_metrics=model_files("metrics.json"),
            calibration=rules.calibrate.output.report,
            pseudo_labels=expand(model_out("pseudo_labels.json"), member=STUDENT, fold=FOLDS) if STUDENT else [],
            checkpoints=final_checkpoints() if config["tracking"]["log_models"] else [],
            code=code("track"),
        output:
            mark=TRACKING_MARK,
            runs=report(
                out("tracking/runs.html"),
                caption=caption("tracked_runs"),
                category="3. Results",
                subcategory="tracked runs",
            ),
        log:
            out("logs/track.log"),
        benchmark:
            out("benchmarks/track.tsv")
        conda:
            ENVIRONMENT
        params:
            run=STAGE_RUNNER,
            recipe=ShellText(TRACKED_RECIPE),
            p=stage_slice(
                "track",
                config,
                uri=TRACKING_URI,
                experiment=tracking_store.experiment_name(config),
                scope="oof" if KFOLD else "valid",
                recipe_digest=hashlib.sha256(TRACKED_RECIPE.encode()).hexdigest()[:16],
                models=tracked_models(),
                member_dirs={name: MEMBER_DIR.format(member=name) for name in MODEL_CHAINS},
                checkpoints=final_checkpoints() if config["tracking"]["log_models"] else [],
            ),
        shell:
            stage_shell(
                "track",
                "--files {input.results:q} {input.training:q} {input.plots:q} {input.model_metrics:q} {input.calibration:q} "
                "{input.pseudo_labels:q} {input.checkpoints:q} --recipe {params.recipe:q} --mark {output.mark:q} "
                "--params {params.p:q}",
            )
