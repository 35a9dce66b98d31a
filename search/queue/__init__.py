"""The grid queue in tables of its own (issue 31): which points wait, who claimed which, and the
schema's own migration. Optuna's trials are created through its public storage API only when a
point is claimed."""
