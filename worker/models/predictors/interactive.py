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

    def check_forward(self, prepared: Any, spec: ModelSpec) -> None:
        """One click on a tiny synthetic scan through ``refine`` (the uploaded-weights check): raises if the weights
        do not run or answer a non-binary mask."""
        from worker.models.interactive import InteractiveRequest, refine

        image = np.full((24, 24, 16), -100, dtype=np.int16)
        image[8:16, 8:16, 5:11] = 60
        affine = np.diag([4.0, 4.0, 4.0, 1.0])
        name = prepared.structures[0]
        answer = refine(
            prepared,
            InteractiveRequest(image, (4.0, 4.0, 4.0), affine, name, positive=[(12, 12, 8)]),
        )
        if answer.mask.dtype != bool or answer.mask.ndim != 3:
            raise ValueError(f"the model answered a {answer.mask.dtype} mask of {answer.mask.ndim} dimensions")

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
