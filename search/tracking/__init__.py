"""MLflow: the study's parent run and one nested run per trial (`runs`), the study report
(`report`), and the local MLflow store (`local_store`, `store_check`).
"""
