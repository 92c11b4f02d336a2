# Stages 3-4: precomputed activations, then the head (on the activations, then with augmentation).


rule precompute:
    """Pooled backbone activations of un-augmented train / valid / test at the first training size."""
    input:
        split=model_out("split.csv"),
        test=out("test.csv"),
        cache=RESIZED,
        code=code("precompute"),
    output:
        train=ensure(f"{ACTIVATIONS}/train.npy", non_empty=True),
        valid=ensure(f"{ACTIVATIONS}/valid.npy", non_empty=True),
        test=ensure(f"{ACTIVATIONS}/test.npy", non_empty=True),
        manifest=f"{ACTIVATIONS}/manifest.json",
    params:
        p=as_params(arch=MODEL["arch"], weights=MODEL["weights"], **WEIGHTS, size=HEAD["size"], **LOADER, **RUNTIME),
        out_dir=lambda wildcards, output: Path(output.manifest).parent,
    threads: MAX_THREADS
    resources:
        gpu=GPU_JOBS,
    log:
        model_out("logs/precompute.log"),
    benchmark:
        model_out("benchmarks/precompute.tsv")
    shell:
        stage_shell(
            "precompute",
            "--split-csv {input.split:q} --test-csv {input.test:q} --cache-dir {input.cache:q} "
            "--out-dir {params.out_dir:q} --threads {threads} --params {params.p:q}",
        )


rule train_head:
    """lr_find and fits on the activations, then fits with augmentation through the frozen body."""
    input:
        split=model_out("split.csv"),
        activations=multiext(f"{ACTIVATIONS}/", "train.npy", "valid.npy", "manifest.json"),
        cache=RESIZED,
        code=code("train_head"),
    output:
        model=model_out("head/model.pt"),
        log=model_out("head/log.csv"),
        lr_schedule=training_report(model_out("head/lr_schedule.png"), "lr_schedule", "head"),
        curves=training_report(model_out("head/curves.png"), "curves", "head"),
        batch_loss=training_report(model_out("head/batch_loss.png"), "batch_loss", "head"),
        lr_find=[training_report(model_out("head/lr_find.png"), "lr_find", "head"), model_out("head/lr_find.csv")]
        if HEAD["lr_find"]
        else [],
    params:
        p=as_params(**MODEL, **WEIGHTS, **HEAD, **TRANSFORMS, **LOADER, **TRAINING_RUNTIME, **config["train"],
                    images=RESIZE_RULE),
        activations=lambda wildcards, input: Path(input.activations[0]).parent,
        out_dir=lambda wildcards, output: Path(output.model).parent,
    threads: MAX_THREADS
    resources:
        gpu=TRAINING_GPUS,
    log:
        model_out("logs/train_head.log"),
    benchmark:
        model_out("benchmarks/train_head.tsv")
    shell:
        stage_shell(
            "train_head",
            "--split-csv {input.split:q} --activations {params.activations:q} "
            "--cache-dir {input.cache:q} --out-dir {params.out_dir:q} --threads {threads} --params "
            "{params.p:q}",
            launch="{TRAINING_LAUNCH}",
        )
