"""The Optuna storage: engines per backend (`engines`), retries through outages (`retry`), locks
every process sharing the storage sees (`locks`), and opening and closing it (`sessions`).
"""
