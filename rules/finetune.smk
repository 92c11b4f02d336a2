# Stage 5: one job per progressive size; each starts from the previous size's checkpoint (the head's for the first).


rule finetune:
    """SGDR fits at one size, optionally unfrozen with differential learning rates."""
    input:
        split=out("split.csv"),
        cache=RESIZED,
        checkpoint=lambda wildcards: previous_checkpoint(wildcards.name),
        code=code("finetune"),
    output:
        model=out("finetune/{name}/model.pt"),
        log=out("finetune/{name}/log.csv"),
        lr_schedule=report(out("finetune/{name}/lr_schedule.png"), category="Training"),
        curves=report(out("finetune/{name}/curves.png"), category="Training"),
    wildcard_constraints:
        name=r"\d+_\d+",
    params:
        p=finetune_params,
        out_dir=lambda wildcards, output: Path(output.model).parent,
    threads: MAX_THREADS
    resources:
        gpu=GPU_JOBS,
    log:
        out("logs/finetune_{name}.log"),
    benchmark:
        out("benchmarks/finetune_{name}.tsv")
    shell:
        "{STAGE_ENV} {PYTHON} -m pipeline.finetune --split-csv {input.split:q} --cache-dir {input.cache:q} "
        "--checkpoint {input.checkpoint:q} --out-dir {params.out_dir:q} --threads {threads} "
        "--params {params.p:q} 2>&1 | tee {log:q}"
