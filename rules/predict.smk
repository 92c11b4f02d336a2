# Stages 6-7: test-time augmentation and the submission.


rule tta:
    """A plain pass plus n_aug augmented passes on valid (metrics) and test (probabilities)."""
    input:
        split=out("split.csv"),
        test=out("test.csv"),
        cache=RESIZED,
        checkpoint=final_checkpoint(),
        code=code("tta"),
    output:
        valid=out("tta/valid_probs.npy"),
        test=ensure(out("tta/test_probs.npy"), non_empty=True),
        confusion=report(out("tta/confusion_matrix.png"), category="Results"),
        metrics=out("metrics.json"),
    params:
        p=as_params(arch=MODEL["arch"], **config["tta"], **TRANSFORMS, **LOADER, **RUNTIME),
        out_dir=lambda wildcards, output: Path(output.test).parent,
    threads: MAX_THREADS
    resources:
        gpu=GPU_JOBS,
    log:
        out("logs/tta.log"),
    benchmark:
        out("benchmarks/tta.tsv")
    shell:
        "{STAGE_ENV} {PYTHON} -m pipeline.tta --split-csv {input.split:q} --test-csv {input.test:q} "
        "--cache-dir {input.cache:q} --checkpoint {input.checkpoint:q} --out-dir {params.out_dir:q} "
        "--metrics {output.metrics:q} --threads {threads} --params {params.p:q} 2>&1 | tee {log:q}"


rule submission:
    """The Kaggle CSV, checked against sample_submission.csv (same ids, same columns) before it is kept."""
    input:
        probs=rules.tta.output.test,
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
        "{STAGE_ENV} {PYTHON} -m pipeline.submission --probs {input.probs:q} --test-csv {input.test:q} "
        "--split-csv {input.split:q} {params.sample} --out {output:q} --params {params.p:q} 2>&1 | tee {log:q}"
