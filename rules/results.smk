# Stages 6-7: test-time augmentation (per model), out-of-fold predictions and the fold ensemble (K-fold runs),
# calibration for log loss, and the submission.


rule tta:
    """A plain pass plus n_aug augmented passes on valid (metrics) and test (probabilities), averaged over the
    last size's snapshots when it keeps any."""
    input:
        split=model_out("split.csv"),
        test=out("test.csv"),
        cache=RESIZED,
        checkpoint=final_checkpoint(),
        snapshots=tta_snapshots(),
        code=code("tta"),
    output:
        valid=model_out("tta/valid_probs.npy"),
        test=ensure(model_out("tta/test_probs.npy"), non_empty=True),
        valid_passes=model_out("tta/valid_passes.npy"),
        test_passes=model_out("tta/test_passes.npy"),
        confusion=report(model_out("tta/confusion_matrix.png"), caption=caption("confusion_matrix"), category="3. Results",
                         subcategory="fold {fold}" if KFOLD else "validation"),
        metrics=report(model_out("metrics.json"), caption=caption("metrics"), category="3. Results",
                       subcategory="fold {fold}" if KFOLD else "validation"),
    params:
        p=as_params(arch=MODEL["arch"], **config["tta"], **TRANSFORMS, **LOADER, **RUNTIME, preprocessing=PREPROCESSING),
        checkpoints=lambda wildcards: " ".join(map(shlex.quote, tta_checkpoints(wildcards))),
        out_dir=lambda wildcards, output: Path(output.test).parent,
    threads: MAX_THREADS
    resources:
        gpu=GPU_JOBS,
    log:
        model_out("logs/tta.log"),
    benchmark:
        model_out("benchmarks/tta.tsv")
    shell:
        stage_shell(
            "tta",
            "--split-csv {input.split:q} --test-csv {input.test:q} --cache-dir {input.cache:q} "
            "--checkpoint {params.checkpoints} --out-dir {params.out_dir:q} "
            "--metrics {output.metrics:q} --threads {threads} --params {params.p:q}",
        )


if KFOLD:

    localrules:
        oof,

    rule oof:
        """Out-of-fold predictions (each labelled image predicted by the fold model that never saw it), per-fold
        scores, and the fold ensemble's test probabilities."""
        input:
            split=out("split.csv"),
            fold_splits=for_every_fold(model_out("split.csv")),
            valid_passes=for_every_fold(model_out("tta/valid_passes.npy")),
            test_passes=for_every_fold(model_out("tta/test_passes.npy")),
            metrics=for_every_fold(model_out("metrics.json")),
            code=code("oof"),
        output:
            oof=out("oof.csv"),
            valid_passes=out("oof/valid_passes.npy"),
            test_passes=out("oof/test_passes.npy"),
            metrics=out("oof/cv_metrics.json"),
            folds_plot=report(out("plots/cv_folds.png"), caption=caption("cv_folds"), category="3. Results",
                              subcategory="out of fold"),
            confusion=report(out("plots/oof_confusion_matrix.png"), caption=caption("oof_confusion_matrix"),
                             category="3. Results", subcategory="out of fold"),
        params:
            p=as_params(folds=FOLDS, n_aug=config["tta"]["n_aug"], **config["ensemble"]),
            fold_dirs=" ".join(map(shlex.quote, for_every_fold(MODEL_DIR))),
            out_dir=lambda wildcards, output: Path(output.valid_passes).parent,
            plots_dir=lambda wildcards, output: Path(output.folds_plot).parent,
        log:
            out("logs/oof.log"),
        shell:
            stage_shell(
                "oof",
                "--split-csv {input.split:q} --fold-dirs {params.fold_dirs} --oof-csv {output.oof:q} "
                "--out-dir {params.out_dir:q} --plots-dir {params.plots_dir:q} --params {params.p:q}",
            )


def calibration_inputs():
    """Out-of-sample predictions to calibrate on, and the test predictions to apply it to."""
    if KFOLD:
        return {"rows": out("oof.csv"), "valid_passes": rules.oof.output.valid_passes,
                "test_passes": rules.oof.output.test_passes, "cv_metrics": rules.oof.output.metrics}
    return {"rows": out("split.csv"), "valid_passes": rules.tta.output.valid_passes,
            "test_passes": rules.tta.output.test_passes}


def interpretation(name):
    """An interpret output, in the report's Results under "interpretation"."""
    return report(out(f"interpret/{name}"), caption=caption(Path(name).stem), category="3. Results",
                  subcategory="interpretation (out of fold)" if KFOLD else "interpretation")


# Seconds of work each, on arrays already computed: on a cluster they run where Snakemake runs.
localrules:
    calibrate,
    interpret,
    report_tables,
    submission,


rule calibrate:
    """Fits the plain-pass weight and a temperature for log loss on out-of-sample predictions (the OOF predictions,
    or the validation set cross-fitted), keeps them only where they help out of sample, applies them to the test
    predictions. In a K-fold run it also writes cv_metrics.json and metrics.json (out-of-fold figures)."""
    input:
        **calibration_inputs(),
        split=out("split.csv"),
        code=code("calibrate"),
    output:
        report=out("calibration/calibration.json"),
        valid=out("calibration/valid_probs.npy"),
        test=ensure(out("calibration/test_probs.npy"), non_empty=True),
        plot=report(out("calibration/reliability.png"), caption=caption("reliability"), category="3. Results",
                    subcategory="calibration"),
        cv_metrics=[report(out("cv_metrics.json"), caption=caption("cv_metrics"), category="3. Results",
                           subcategory="out of fold"), out("metrics.json")]
        if KFOLD
        else [],
    params:
        p=as_params(n_aug=config["tta"]["n_aug"], seed=config["seed"], **config["calibration"]),
        out_dir=lambda wildcards, output: Path(output.report).parent,
        cv_reports=lambda wildcards, input, output: (
            f"--cv-metrics-in {shlex.quote(input.cv_metrics)} --cv-metrics {shlex.quote(output.cv_metrics[0])} "
            f"--metrics {shlex.quote(output.cv_metrics[1])}"
        )
        if KFOLD
        else "",
    threads: 2  # two parameters fitted on (N, C) arrays: more threads only contend
    log:
        out("logs/calibrate.log"),
    shell:
        stage_shell(
            "calibrate",
            "--split-csv {input.split:q} --valid-rows {input.rows:q} "
            "--valid-passes {input.valid_passes:q} --test-passes {input.test_passes:q} --out-dir "
            "{params.out_dir:q} {params.cv_reports} --threads {threads} --params {params.p:q}",
        )


rule interpret:
    """Looks back at the pictures: the validation images with the highest loss, lesson 1's most correct / incorrect /
    uncertain per class, the most confused pairs and a per-class table, over the probabilities the submission's
    calibration chose (a K-fold run's out-of-fold predictions). Reads predictions only: it never reruns training."""
    input:
        split=out("split.csv"),
        rows=calibration_inputs()["rows"],
        probs=rules.calibrate.output.valid,
        cache=RESIZED,
        code=code("interpret"),
    output:
        top_losses=interpretation("top_losses.png"),
        by_class=interpretation("by_class.png"),
        most_confused=interpretation("most_confused.csv"),
        per_class=interpretation("per_class.csv"),
    params:
        p=as_params(size=FINAL_SIZE, **config["interpret"], preprocessing=PREPROCESSING),
        out_dir=lambda wildcards, output: Path(output.per_class).parent,
    log:
        out("logs/interpret.log"),
    shell:
        stage_shell(
            "interpret",
            "--split-csv {input.split:q} --valid-rows {input.rows:q} --valid-probs {input.probs:q} "
            "--cache-dir {input.cache:q} --out-dir {params.out_dir:q} --params {params.p:q}",
        )


rule report_tables:
    """The scores and the interpret tables as one HTML page, for `snakemake --report` (which shows HTML inline)."""
    input:
        metrics=out("metrics.json"),
        calibration=rules.calibrate.output.report,
        per_class=rules.interpret.output.per_class,
        most_confused=rules.interpret.output.most_confused,
        class_counts=out("class_counts.csv"),
        cv_metrics=out("cv_metrics.json") if KFOLD else [],
        code=code("report_tables"),
    output:
        report(out("report/tables.html"), caption=caption("tables"), category="3. Results", subcategory="tables"),
    params:
        cv_metrics=lambda wildcards, input: f"--cv-metrics {shlex.quote(input.cv_metrics)}" if KFOLD else "",
    log:
        out("logs/report_tables.log"),
    shell:
        stage_shell(
            "report_tables",
            "--metrics {input.metrics:q} --calibration {input.calibration:q} "
            "--per-class {input.per_class:q} --most-confused {input.most_confused:q} "
            "--class-counts {input.class_counts:q} {params.cv_metrics} --out {output:q}",
        )


rule submission:
    """The Kaggle CSV, checked against sample_submission.csv (same ids, same columns) before it is kept."""
    input:
        probs=rules.calibrate.output.test,
        test=out("test.csv"),
        split=out("split.csv"),
        sample=sample_submission(),
        code=code("submission"),
    output:
        ensure(out("submission.csv"), non_empty=True),
    params:
        p=as_params(positive_class=config["data"]["positive_class"], **config["submission"]),
        sample=sample_submission_flag(),
    log:
        out("logs/submission.log"),
    shell:
        stage_shell(
            "submission",
            "--probs {input.probs:q} --test-csv {input.test:q} --split-csv {input.split:q} "
            "{params.sample} --out {output:q} --params {params.p:q}",
        )
