# Stages 1-2: the demo data (demo recipes only), the split, image statistics, the resize cache, the preview.

if DEMO:

    localrules:
        demo_data,

    rule demo_data:
        """Builds the embedded demo data set from scikit-learn's digits, into a folder the builder creates (or finds
        empty) and marks as its own; it refuses any other folder. Its one output is the completion mark."""
        input:
            code=code("demo_data"),
        output:
            DEMO_BUILT,
        log:
            out("logs/demo_data.log"),
        conda:
            ENVIRONMENT
        params:
            run=STAGE_RUNNER,
            data_dir=data_dir,
            settings=flags(layout=LAYOUT, **{key: config["demo"][key] for key in DEMO_SETTINGS}),
            classes=flags(classes=config["demo"].get("classes")),
        shell:
            stage_shell(
                "demo_data",
                "{params.data_dir:q} {params.settings} {params.classes}",
            )


# Seconds of work each: on a cluster they run where Snakemake runs rather than wait in the queue.
localrules:
    split,
    augmentation_preview,


rule split:
    """labels -> split.csv (fastai get_cv_idxs, stratified K-fold, or the valid/ folder), test.csv, class counts.
    In a K-fold run split.csv assigns every labelled image its validation fold (column `fold`)."""
    input:
        **data_inputs(),
        bad_images=out("stats/bad_images.csv"),
        code=code("split"),
    output:
        split=out("split.csv"),
        test=out("test.csv"),
        counts=report(out("class_counts.csv"), caption=caption("class_counts"), category="1. Data"),
    log:
        out("logs/split.log"),
    conda:
        ENVIRONMENT
    params:
        run=STAGE_RUNNER,
        data_dir=data_dir,
        p=split_params(),
    shell:
        stage_shell(
            "split",
            "--data-dir {params.data_dir:q} --bad-images {input.bad_images:q} --split-csv {output.split:q} "
            "--test-csv {output.test:q} --class-counts {output.counts:q} --params {params.p:q}",
        )


if KFOLD:

    localrules:
        fold_split,

    rule fold_split:
        """One fold's split.csv: the images of fold k are its validation set, the other folds its training set."""
        input:
            split=out("split.csv"),
            code=code("fold_split"),
        output:
            model_out("split.csv"),
        log:
            model_out("logs/fold_split.log"),
        wildcard_constraints:
            member=r"[A-Za-z][A-Za-z0-9_]*",  # a member's own folds; the students' come from pseudo_labels
        conda:
            ENVIRONMENT
        params:
            run=STAGE_RUNNER,
        shell:
            stage_shell(
                "fold_split",
                "--split-csv {input.split:q} --fold {wildcards.fold} --out {output:q}",
            )


rule image_stats:
    """sizes.csv, size histograms, a summary and the unreadable images, in one parallel decoding pass."""
    input:
        **data_inputs(),
        code=code("image_stats"),
    output:
        sizes=out("stats/sizes.csv"),
        summary=out("stats/summary.json"),
        plot_all=report(out("plots/sizes_all.png"), caption=caption("sizes"), category="1. Data"),
        plot_small=report(out("plots/sizes_under_1000.png"), caption=caption("sizes"), category="1. Data"),
        bad_images=out("stats/bad_images.csv"),
    log:
        out("logs/image_stats.log"),
    benchmark:
        out("benchmarks/image_stats.tsv")
    conda:
        ENVIRONMENT
    threads: MAX_THREADS
    params:
        run=STAGE_RUNNER,
        data_dir=data_dir,
        p=stage_slice("image_stats", config),
        fingerprint=DATA_FINGERPRINT,
    shell:
        stage_shell(
            "image_stats",
            "--data-dir {params.data_dir:q} --sizes-csv {output.sizes:q} --summary {output.summary:q} "
            "--plot-all {output.plot_all:q} --plot-small {output.plot_small:q} "
            "--bad-images {output.bad_images:q} --threads {threads} --params {params.p:q}",
        )


rule resize:
    """The resize cache (shorter side 340 by default) that every later stage reads; one per shorter side the
    members ask for."""
    input:
        **data_inputs(),
        bad_images=out("stats/bad_images.csv"),
        code=code("resize"),
    output:
        directory(out("resized/{side}")),
    log:
        out("logs/resize_{side}.log"),
    benchmark:
        out("benchmarks/resize_{side}.tsv")
    wildcard_constraints:
        side=r"\d+",
    conda:
        ENVIRONMENT
    threads: MAX_THREADS
    params:
        run=STAGE_RUNNER,
        data_dir=data_dir,
        p=lambda wildcards: stage_slice("resize", config, shorter_side=int(wildcards.side)),
        fingerprint=DATA_FINGERPRINT,
    shell:
        stage_shell(
            "resize",
            "--data-dir {params.data_dir:q} --bad-images {input.bad_images:q} --out-dir {output:q} "
            "--threads {threads} --params {params.p:q}",
        )


rule augmentation_preview:
    """The lesson's plots(ims): one training image under six random training augmentations."""
    input:
        cache=PRIMARY.resized,
        code=code("augmentation_preview"),
    output:
        report(out("plots/augmentations.png"), caption=caption("augmentations"), category="1. Data"),
    log:
        out("logs/augmentation_preview.log"),
    conda:
        ENVIRONMENT
    params:
        run=STAGE_RUNNER,
        p=stage_slice("augmentation_preview", PRIMARY.recipe, preprocessing=PRIMARY.preprocessing),
    shell:
        stage_shell(
            "augmentation_preview",
            "--cache-dir {input.cache:q} --out {output:q} --params {params.p:q}",
        )
