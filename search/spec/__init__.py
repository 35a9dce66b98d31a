"""A study spec: YAML read into frozen typed objects (`loader.load_spec`), every error naming file,
line, field, expected and found; the search space as Optuna parameters (`params`).
"""
