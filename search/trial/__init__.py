"""One trial's life, below the study loop (search.study): its params to a `TrainConfig`, the data
it trains on, its trainer call (with its repeats' seeds and its model costs), its deadline, its
MLflow run and its tell (`runner.TrialRunner`, `runner.TrialSession`)."""
