"""fast.ai lesson 2 as a reproducible pipeline: one module per Snakemake stage plus a small shared core."""
