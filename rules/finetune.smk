# Stage 5: one job per progressive size; each starts from the previous size's checkpoint (the head's for the first).


rule finetune:
    """SGDR fits at one size, optionally unfrozen with differential learning rates; with `snapshots: k`, the
    weights at the ends of the last k SGDR cycles (the snapshot ensemble TTA averages)."""
    input:
        split=MODEL_SPLIT,
        cache=resize_cache,
        checkpoint=previous_checkpoint,
        code=code("finetune"),
    output:
        model=model_out("finetune/{name}/model.pt"),
        log=model_out("finetune/{name}/log.csv"),
        lr_schedule=training_report(
            model_out("finetune/{name}/lr_schedule.png"), "lr_schedule", "size {name} (fine-tune)"
        ),
        curves=training_report(model_out("finetune/{name}/curves.png"), "curves", "size {name} (fine-tune)"),
        batch_loss=training_report(model_out("finetune/{name}/batch_loss.png"), "batch_loss", "size {name} (fine-tune)"),
        snapshots=directory(model_out("finetune/{name}/snapshots")),
    log:
        model_out("logs/finetune_{name}.log"),
    benchmark:
        model_out("benchmarks/finetune_{name}.tsv")
    wildcard_constraints:
        name=r"\d+_\d+",
    conda:
        ENVIRONMENT
    threads: MAX_THREADS
    resources:
        gpu=TRAINING_GPUS,
    params:
        run=TRAINING_RUNNER,
        p=finetune_params,
        out_dir=folder_of("model"),
        snapshots=snapshot_flag,
    shell:
        stage_shell(
            "finetune",
            "--split-csv {input.split:q} --cache-dir {input.cache:q} --checkpoint {input.checkpoint:q} "
            "--out-dir {params.out_dir:q} --threads {threads} {params.snapshots} --params {params.p:q}",
            before="mkdir -p {output.snapshots:q}",
        )


if LR_FIND_NAMES:

    rule lr_find:
        """The lesson's "unfreeze, lr_find again": lr_find on the weights a fine-tune size starts from, frozen or
        unfrozen as it trains, its layer groups' lrs moving together; a job apart from the size's fits."""
        input:
            split=MODEL_SPLIT,
            cache=resize_cache,
            checkpoint=previous_checkpoint,
            code=code("lr_find"),
        output:
            plot=training_report(model_out("finetune/{name}/lr_find.png"), "lr_find", "size {name} (fine-tune)"),
            table=model_out("finetune/{name}/lr_find.csv"),
        log:
            model_out("logs/lr_find_{name}.log"),
        benchmark:
            model_out("benchmarks/lr_find_{name}.tsv")
        wildcard_constraints:
            name="|".join(LR_FIND_NAMES),
        conda:
            ENVIRONMENT
        threads: MAX_THREADS
        resources:
            gpu=GPU_JOBS,
        params:
            run=STAGE_RUNNER,
            p=lr_find_params,
            out_dir=folder_of("plot"),
        shell:
            stage_shell(
                "lr_find",
                "--split-csv {input.split:q} --cache-dir {input.cache:q} --checkpoint {input.checkpoint:q} "
                "--out-dir {params.out_dir:q} --threads {threads} --params {params.p:q}",
            )
