"""fast.ai lesson 2 as a reproducible pipeline: the shared core here, one module per Snakemake stage in `stages/`.

The rule a contributor follows: a module with a `main()` (a stage, run by its rule or by hand) goes in
`pipeline/stages/`, is named like its rule, and imports only the core; the core never imports a stage. A helper two
stages need moves to the core. `tools/layout_summary.py` lists any import that breaks the rule.
"""
