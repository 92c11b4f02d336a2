"""What the Snakefile imports at plan time besides the recipe checks: never torch."""
