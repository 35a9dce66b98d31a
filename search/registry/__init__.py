"""The model registry: promoting the best trial (`promotion`, `registration`, `aliases`), resolving
model references (`refs`), and using a registered model (`predict`, `serve`, `pyfunc_model`).
"""
