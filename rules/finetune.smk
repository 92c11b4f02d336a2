# Stage 5: one job per progressive size; each starts from the previous size's checkpoint (the head's for the first).


rule finetune:
    """SGDR fits at one size, optionally unfrozen with differential learning rates; with `snapshots: k`, the
    weights at the ends of the last k SGDR cycles (the snapshot ensemble TTA averages)."""
    input:
        split=model_out("split.csv"),
        cache=RESIZED,
        checkpoint=lambda wildcards: previous_checkpoint(wildcards.name),
        code=code("finetune"),
    output:
        model=model_out("finetune/{name}/model.pt"),
        log=model_out("finetune/{name}/log.csv"),
        lr_schedule=report(model_out("finetune/{name}/lr_schedule.png"), category="Training"),
        curves=report(model_out("finetune/{name}/curves.png"), category="Training"),
        snapshots=directory(snapshot_folder("{name}")),
    wildcard_constraints:
        name=r"\d+_\d+",
    params:
        p=finetune_params,
        out_dir=lambda wildcards, output: Path(output.model).parent,
        snapshots=snapshot_flag,
    threads: MAX_THREADS
    resources:
        gpu=TRAINING_GPUS,
    log:
        model_out("logs/finetune_{name}.log"),
    benchmark:
        model_out("benchmarks/finetune_{name}.tsv")
    shell:
        "mkdir -p {output.snapshots:q} && {STAGE_ENV} {TRAINING_LAUNCH} -m pipeline.finetune "
        "--split-csv {input.split:q} --cache-dir {input.cache:q} --checkpoint {input.checkpoint:q} "
        "--out-dir {params.out_dir:q} --threads {threads} {params.snapshots} --params {params.p:q} 2>&1 | tee {log:q}"
