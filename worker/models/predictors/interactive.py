"""The click-guided model as a predictor: ``prepare`` loads it warm (cached per weights like any model); it answers
clicks through ``worker.models.interactive.refine``, not pre-annotation jobs."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.models.predictors.base import Hooks, ModelSpec, register, traits_of


class InteractivePredictor:
    """Loads a registered interactive model version; ``predict`` refuses (a pre-annotation has no clicks)."""

    traits = traits_of("interactive")

    def prepare(self, spec: ModelSpec, weights: bytes | None) -> Any:
        """The warm ``LoadedInteractiveModel`` of the version (``WeightsMissing`` without weights)."""
        from worker.models.interactive import load_interactive_model_bytes  # lazy: torch work only when used

        return load_interactive_model_bytes(weights, spec.config, spec.structures)

    def predict(self, prepared: Any, spec: ModelSpec, volume: np.ndarray, affine: np.ndarray, hooks: Hooks) -> Any:
        """Refused: an interactive model needs clicks (``worker.models.interactive.refine``)."""
        raise ValueError(
            f"model {spec.name} is interactive: it answers clicks (AI refine, MONAI Label infer with points), "
            "not pre-annotation jobs"
        )

    def postprocess(self, raw: Any, spec: ModelSpec) -> np.ndarray:
        """Never reached (``predict`` refuses)."""
        raise ValueError(f"model {spec.name} is interactive and has no pre-annotation output")


register(InteractivePredictor())
