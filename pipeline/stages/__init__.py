"""The stages: one module per Snakemake rule, named like it, each run as `python -m pipeline.stages.<rule>` (plus
`predict`, which no rule runs: it tries a trained model on a user's own photos). A stage imports only the core."""
