# Stages 6-7: test-time augmentation (per model), out-of-fold predictions and the fold ensemble (K-fold runs),
# calibration for log loss, and the submission.


rule tta:
    """A plain pass plus n_aug augmented passes on valid (metrics) and test (probabilities), averaged over the
    last size's snapshots when it keeps any."""
    input:
        split=MODEL_SPLIT,
        test=out("test.csv"),
        cache=resize_cache,
        checkpoint=final_checkpoint,
        snapshots=tta_snapshots,
        code=code("tta"),
    output:
        valid=model_out("tta/valid_probs.npy"),
        test=ensure(model_out("tta/test_probs.npy"), non_empty=True),
        valid_passes=model_out("tta/valid_passes.npy"),
        test_passes=model_out("tta/test_passes.npy"),
        confusion=report(
            model_out("tta/confusion_matrix.png"),
            caption=caption("confusion_matrix"),
            category="3. Results",
            subcategory=MODEL_LABEL or "validation",
        ),
        metrics=report(
            model_out("metrics.json"),
            caption=caption("metrics"),
            category="3. Results",
            subcategory=MODEL_LABEL or "validation",
        ),
    log:
        model_out("logs/tta.log"),
    benchmark:
        model_out("benchmarks/tta.tsv")
    conda:
        ENVIRONMENT
    threads: MAX_THREADS
    resources:
        gpu=GPU_JOBS,
    params:
        run=STAGE_RUNNER,
        p=tta_params,
        checkpoints=lambda wildcards: flags(checkpoint=tta_checkpoints(wildcards)),
        out_dir=folder_of("test"),
    shell:
        stage_shell(
            "tta",
            "--split-csv {input.split:q} --test-csv {input.test:q} --cache-dir {input.cache:q} "
            "{params.checkpoints} --out-dir {params.out_dir:q} "
            "--metrics {output.metrics:q} --threads {threads} --params {params.p:q}",
        )


if KFOLD:

    localrules:
        oof,

    rule oof:
        """Out-of-fold predictions (each labelled image predicted by the fold model that never saw it), per-fold
        scores, and the fold ensemble's test probabilities (per member, with members)."""
        input:
            split=out("split.csv"),
            fold_splits=every_fold("split.csv"),
            valid_passes=every_fold("tta/valid_passes.npy"),
            test_passes=every_fold("tta/test_passes.npy"),
            metrics=every_fold("metrics.json"),
            code=code("oof"),
        output:
            oof=member_out("oof.csv"),
            valid_passes=member_out("oof/valid_passes.npy"),
            test_passes=member_out("oof/test_passes.npy"),
            metrics=member_out("oof/cv_metrics.json"),
            folds_plot=report(
                member_out("plots/cv_folds.png"),
                caption=caption("cv_folds"),
                category="3. Results",
                subcategory="{member}, out of fold" if MEMBER_NAMES else "out of fold",
            ),
            confusion=report(
                member_out("plots/oof_confusion_matrix.png"),
                caption=caption("oof_confusion_matrix"),
                category="3. Results",
                subcategory="{member}, out of fold" if MEMBER_NAMES else "out of fold",
            ),
        log:
            member_out("logs/oof.log"),
        conda:
            ENVIRONMENT
        params:
            run=STAGE_RUNNER,
            p=oof_params,
            fold_dirs=lambda wildcards: flags(
                fold_dirs=for_every_fold(model_chain(wildcards).stage_dir("tta"), wildcards)
            ),
            out_dir=folder_of("valid_passes"),
            plots_dir=folder_of("folds_plot"),
        shell:
            stage_shell(
                "oof",
                "--split-csv {input.split:q} {params.fold_dirs} --oof-csv {output.oof:q} "
                "--out-dir {params.out_dir:q} --plots-dir {params.plots_dir:q} --params {params.p:q}",
            )


if BLENDS:

    localrules:
        blend,

    rule blend:
        """Blend weights fitted on the members' out-of-fold predictions (each fold scored with weights fitted on the
        other folds: the cross-fitted OOF figure), applied to their fold-ensembled test predictions."""
        input:
            split=out("split.csv"),
            oof=blend_inputs("oof.csv"),
            valid_passes=blend_inputs("oof/valid_passes.npy"),
            test_passes=blend_inputs("oof/test_passes.npy"),
            cv_metrics=blend_inputs("oof/cv_metrics.json"),
            code=code("blend"),
        output:
            weights=report(
                out("{blend}/weights.json"),
                caption=caption("blend_weights"),
                category="3. Results",
                subcategory="{blend}",
            ),
            oof=out("{blend}/oof.csv"),
            valid_passes=out("{blend}/valid_passes.npy"),
            test_passes=out("{blend}/test_passes.npy"),
            cv_metrics=out("{blend}/cv_metrics.json"),
            correlation=report(
                out("{blend}/correlation.png"),
                caption=caption("blend_correlation"),
                category="3. Results",
                subcategory="{blend}",
            ),
            folds_plot=out("{blend}/cv_folds.png"),
        log:
            out("logs/{blend}.log"),
        wildcard_constraints:
            blend="blend|blend_pseudo",
        conda:
            ENVIRONMENT
        params:
            run=STAGE_RUNNER,
            p=stage_slice("blend", config),
            members=lambda wildcards: flags(
                members=blend_members(wildcards),
                member_dirs=[out(f"members/{name}") for name in blend_members(wildcards)],
            ),
            out_dir=folder_of("weights"),
        shell:
            stage_shell(
                "blend",
                "--split-csv {input.split:q} {params.members} " "--out-dir {params.out_dir:q} --params {params.p:q}",
            )


if STUDENT:

    localrules:
        pseudo_labels,

    TEACHERS = members.teachers(config)
    STUDENT_OF = members.student(config)

    rule pseudo_labels:
        """Fold k's student split: fold k's training images plus the test images fold k's teacher labels
        confidently; the teacher is made only of fold k's models, which never saw fold k's validation images."""
        input:
            fold_split=out(f"members/{STUDENT_OF}/folds/{{fold}}/split.csv"),
            test=out("test.csv"),
            teacher_probs=[CHAINS[name].path("tta/test_probs.npy") for name in TEACHERS],
            blend_weights=out("blend/weights.json") if config["pseudo"]["teacher"] == "blend" else [],
            code=code("pseudo_labels"),
        output:
            split=out(f"members/{STUDENT}/folds/{{fold}}/split.csv"),
            report=out(f"members/{STUDENT}/folds/{{fold}}/pseudo_labels.json"),
        log:
            out(f"members/{STUDENT}/folds/{{fold}}/logs/pseudo_labels.log"),
        conda:
            ENVIRONMENT
        params:
            run=STAGE_RUNNER,
            p=stage_slice("pseudo_labels", config),
            weights=lambda wildcards, input: flags(blend_weights=input.blend_weights or None),
        shell:
            stage_shell(
                "pseudo_labels",
                "--fold-split {input.fold_split:q} --test-csv {input.test:q} --teacher-probs {input.teacher_probs:q} "
                "{params.weights} --fold {wildcards.fold} --out {output.split:q} --report {output.report:q} "
                "--params {params.p:q}",
            )


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
        test=out("test.csv"),
        code=code("calibrate"),
    output:
        report=out("calibration/calibration.json"),
        valid=out("calibration/valid_probs.npy"),
        test=ensure(out("calibration/test_probs.npy"), non_empty=True),
        plot=report(
            out("calibration/reliability.png"),
            caption=caption("reliability"),
            category="3. Results",
            subcategory="calibration",
        ),
        cv_metrics=(
            [
                report(
                    out("cv_metrics.json"),
                    caption=caption("cv_metrics"),
                    category="3. Results",
                    subcategory="out of fold",
                ),
                out("metrics.json"),
            ]
            if KFOLD
            else []
        ),
    log:
        out("logs/calibrate.log"),
    conda:
        ENVIRONMENT
    threads: 2  # two parameters fitted on (N, C) arrays: more threads only contend
    params:
        run=STAGE_RUNNER,
        p=stage_slice("calibrate", config, n_aug=CALIBRATION_N_AUG),
        out_dir=folder_of("report"),
        cv_reports=lambda wildcards, input, output: (
            flags(cv_metrics_in=input.cv_metrics, cv_metrics=output.cv_metrics[0], metrics=output.cv_metrics[1])
            if KFOLD
            else ""
        ),
    shell:
        stage_shell(
            "calibrate",
            "--split-csv {input.split:q} --valid-rows {input.rows:q} "
            "--valid-passes {input.valid_passes:q} --test-passes {input.test_passes:q} --test-csv {input.test:q} --out-dir "
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
        cache=PRIMARY.resized,
        code=code("interpret"),
    output:
        top_losses=interpretation("top_losses.png"),
        by_class=interpretation("by_class.png"),
        most_confused=interpretation("most_confused.csv"),
        per_class=interpretation("per_class.csv"),
    log:
        out("logs/interpret.log"),
    conda:
        ENVIRONMENT
    params:
        run=STAGE_RUNNER,
        p=stage_slice("interpret", config, size=PRIMARY.final_size, preprocessing=PRIMARY.preprocessing),
        out_dir=folder_of("per_class"),
    shell:
        stage_shell(
            "interpret",
            "--split-csv {input.split:q} --valid-rows {input.rows:q} --valid-probs {input.probs:q} "
            "--cache-dir {input.cache:q} --out-dir {params.out_dir:q} --params {params.p:q}",
        )


rule report_tables:
    """The scores and the interpret tables as one HTML page, for `snakemake --report` (which shows HTML inline)."""
    input:
        metrics=recipe_metrics(),
        calibration=rules.calibrate.output.report,
        per_class=rules.interpret.output.per_class,
        most_confused=rules.interpret.output.most_confused,
        class_counts=out("class_counts.csv"),
        cv_metrics=out("cv_metrics.json") if KFOLD else [],
        blends=[out(f"{blend}/weights.json") for blend in BLENDS],
        pseudo_labels=expand(model_out("pseudo_labels.json"), member=STUDENT, fold=FOLDS) if STUDENT else [],
        code=code("report_tables"),
    output:
        report(out("report/tables.html"), caption=caption("tables"), category="3. Results", subcategory="tables"),
    log:
        out("logs/report_tables.log"),
    conda:
        ENVIRONMENT
    params:
        run=STAGE_RUNNER,
        # the out-of-fold tables of a K-fold run, and with members the blends' and the pseudo-label round's
        cv_metrics=lambda wildcards, input: flags(
            cv_metrics=input.cv_metrics if KFOLD else None, blend=input.blends, pseudo_labels=input.pseudo_labels
        ),
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
    log:
        out("logs/submission.log"),
    conda:
        ENVIRONMENT
    params:
        run=STAGE_RUNNER,
        p=stage_slice("submission", config),
        sample=sample_submission_flag(),
    shell:
        stage_shell(
            "submission",
            "--probs {input.probs:q} --test-csv {input.test:q} --split-csv {input.split:q} "
            "{params.sample} --out {output:q} --params {params.p:q}",
        )
