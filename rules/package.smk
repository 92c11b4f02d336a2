# The offline bundle for Kaggle code competitions: `snakemake --cores all package`. Not part of `rule all`, so a plain
# run never pays for it; asked for, it first checks that a bundle can reproduce this run (before any job runs).


rule package:
    """Every model the submission uses as ONNX (normalisation inside, dynamic batch), manifest.json, predict.py,
    requirements.txt and a README: a folder that writes this run's submission offline. Checked against the run's own
    submission before it is kept."""
    input:
        unpack(package_inputs),
        code=code("package"),
    output:
        directory(out("package")),
    log:
        out("logs/package.log"),
    benchmark:
        out("benchmarks/package.tsv")
    conda:
        ENVIRONMENT
    threads: MAX_THREADS
    params:
        run=STAGE_RUNNER,
        p=stage_slice("package", config),
        plan=lambda wildcards: json.dumps(package_plan(), sort_keys=True),
        cache=out("onnx_cache"),
    shell:
        stage_shell(
            "package",
            "--plan {params.plan:q} --out-dir {output:q} --cache-dir {params.cache:q} --threads {threads} "
            "--params {params.p:q}",
        )
