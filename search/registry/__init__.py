"""The model registry: promoting the best trial (`promotion`: `study_snapshot`, `choice`,
`rebuild`, `registration`, `aliases`), resolving model references (`refs`), and using a
registered model (`loading`, `predict`, `serve`, `pyfunc_model`): through installed code only,
unless stored code is trusted on purpose.
"""
