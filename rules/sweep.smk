# A sweep's scores of each member (`python -m pipeline.sweep` asks for them by name; `all` never does): the
# validation loss after its first fine-tune size, which the pruner compares, and its calibrated out-of-fold (or
# validation) log loss, which the study minimises.


if MEMBER_NAMES:

    localrules:
        early_score,
        member_score,

    rule early_score:
        """A trial's validation loss after its first fine-tune size: each fold's last epoch, and their mean."""
        input:
            logs=lambda wildcards: model_files(f"{early_stage(CHAINS[wildcards.member])}/log.csv", wildcards.member),
            code=code("early_score"),
        output:
            member_out("sweep/early_score.json"),
        log:
            member_out("logs/early_score.log"),
        wildcard_constraints:
            member=r"[A-Za-z][A-Za-z0-9_]*",  # the members', not the pseudo-label students'
        conda:
            ENVIRONMENT
        params:
            run=STAGE_RUNNER,
            stage=lambda wildcards: early_stage(CHAINS[wildcards.member]),
        shell:
            stage_shell("early_score", "--logs {input.logs:q} --stage {params.stage} --out {output:q}")

    rule member_score:
        """A trial's score as its submission would be scored: out-of-fold (or validation) log loss, calibrated."""
        input:
            unpack(member_score_inputs),
            split=out("split.csv"),
            code=code("member_score"),
        output:
            member_out("sweep/score.json"),
        log:
            member_out("logs/member_score.log"),
        wildcard_constraints:
            member=r"[A-Za-z][A-Za-z0-9_]*",
        conda:
            ENVIRONMENT
        params:
            run=STAGE_RUNNER,
            p=lambda wildcards: CHAINS[wildcards.member].slice("member_score"),
        shell:
            stage_shell(
                "member_score",
                "--split-csv {input.split:q} --valid-rows {input.rows:q} --valid-passes {input.valid_passes:q} "
                "--out {output:q} --params {params.p:q}",
            )
