# Stages 3-4: precomputed activations, then the head (on the activations, then with augmentation).


rule precompute:
    """Pooled backbone activations of un-augmented train / valid / test at the first training size."""
    input:
        split=MODEL_SPLIT,
        test=out("test.csv"),
        cache=resize_cache,
        code=code("precompute"),
    output:
        train=ensure(model_out("activations/{head_size}/train.npy"), non_empty=True),
        valid=ensure(model_out("activations/{head_size}/valid.npy"), non_empty=True),
        test=ensure(model_out("activations/{head_size}/test.npy"), non_empty=True),
        manifest=model_out("activations/{head_size}/manifest.json"),
    log:
        model_out("logs/precompute_{head_size}.log"),
    benchmark:
        model_out("benchmarks/precompute_{head_size}.tsv")
    wildcard_constraints:
        head_size=r"\d+",
    conda:
        ENVIRONMENT
    threads: MAX_THREADS
    resources:
        gpu=GPU_JOBS,
    params:
        run=STAGE_RUNNER,
        p=precompute_params,
        out_dir=folder_of("manifest"),
    shell:
        stage_shell(
            "precompute",
            "--split-csv {input.split:q} --test-csv {input.test:q} --cache-dir {input.cache:q} "
            "--out-dir {params.out_dir:q} --threads {threads} --params {params.p:q}",
        )


rule train_head:
    """lr_find and fits on the activations, then fits with augmentation through the frozen body."""
    input:
        split=MODEL_SPLIT,
        activations=lambda wildcards: [
            concrete(f"{model_chain(wildcards).activations}/{name}", wildcards)
            for name in ("train.npy", "valid.npy", "manifest.json")
        ],
        cache=resize_cache,
        code=code("train_head"),
    output:
        model=model_out("head/model.pt"),
        log=model_out("head/log.csv"),
        lr_schedule=training_report(model_out("head/lr_schedule.png"), "lr_schedule", "head"),
        curves=training_report(model_out("head/curves.png"), "curves", "head"),
        batch_loss=training_report(model_out("head/batch_loss.png"), "batch_loss", "head"),
        lr_find=(
            [training_report(model_out("head/lr_find.png"), "lr_find", "head"), model_out("head/lr_find.csv")]
            if PRIMARY.head["lr_find"]  # alike in every member (pipeline.recipe.members.uniform_problems)
            else []
        ),
    log:
        model_out("logs/train_head.log"),
    benchmark:
        model_out("benchmarks/train_head.tsv")
    conda:
        ENVIRONMENT
    threads: MAX_THREADS
    resources:
        gpu=TRAINING_GPUS,
    params:
        run=TRAINING_RUNNER,
        p=train_head_params,
        activations=lambda wildcards, input: Path(input.activations[0]).parent,
        out_dir=folder_of("model"),
    shell:
        stage_shell(
            "train_head",
            "--split-csv {input.split:q} --activations {params.activations:q} "
            "--cache-dir {input.cache:q} --out-dir {params.out_dir:q} --threads {threads} --params "
            "{params.p:q}",
        )
