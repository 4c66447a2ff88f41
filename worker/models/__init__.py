"""Pure ML code of the worker: networks, preprocessing, inference, classical pre-annotation, attention, training."""
