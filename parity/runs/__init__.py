"""Running the model inside environments: the worker and the job protocol that drives it."""
