"""The model registry: promoting the best trial (`promotion`, `registration`, `aliases`), resolving
model references (`refs`), and using a registered model (`loading`, `predict`, `serve`,
`pyfunc_model`): through installed code only, unless stored code is trusted on purpose.
"""
