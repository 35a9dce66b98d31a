"""Running a study: the claim loop (`loop`) and the study's set-up (`setup`), the grid queue and
which trials train together, batched asks, warm starts, signals and local worker processes. One
trial's life is `search.trial`'s.
"""
