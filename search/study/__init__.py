"""Running a study: the claim loop (`loop`), the grid queue and its groups, one trial's life
(`trial_runner`), deadlines, signals, local worker processes, and the dataset a process loads
once.
"""
