"""MLflow: the study's parent run and one nested run per trial (`runs`), the study report
(`report`, made of `report_description`, `report_plots`, `report_page`, `importances`), and the
local MLflow store (`local_store`, `store_check`).
"""
