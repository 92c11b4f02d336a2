"""The recipe: the schema's defaults for a stage's slice, the checks before planning, members."""
