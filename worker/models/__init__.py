"""Pure ML code of the worker: predictors by architecture, networks, preprocessing, inference, attention, training."""
