"""Hyperparameter search: study specs -> Optuna studies -> trainer -> MLflow -> registry."""
