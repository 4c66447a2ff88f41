"""Fine-tuning a click-guided (``interactive``) model in a training job: approved scans, the simulated clicker.

Called by ``worker.pipelines.training`` for models of the ``interactive`` architecture: the same job, held-out
split, model version, training round and promotion gate as a segmentation model, but the network is trained with
clicks (``worker.models.interactive.finetune``) and both the candidate and the promoted version are measured the
same way on the held-out scans: per structure, the median Dice after three simulated clicks from an empty mask.
A structure a scan's approved version does not hold is simply not drawn from that scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from backend.core.blobstore import BlobStore
from backend.imaging import chunks, nifti
from backend.labels import service as labels
from worker.models.interactive.finetune import ScanSample, fine_tune, measure_clicks

__all__ = ["ARCHITECTURE", "InteractiveItem", "Outcome", "sample_of", "train_and_measure"]

ARCHITECTURE = "interactive"
HELDOUT_CLICKS = 3


@dataclass(frozen=True)
class InteractiveItem:
    """A label version to train on: its scan's image and the manifests of the structures it holds."""

    version_id: int
    case_id: str
    image_digest: str
    manifests: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    """What a fine-tuning run produced: the weights, held-out figures of the candidate and of the promoted version."""

    weights: bytes
    heldout_new: dict[str, object]
    heldout_previous: dict[str, object]
    steps_run: int


def sample_of(blobs: BlobStore, item: InteractiveItem) -> ScanSample:
    """The scan volume and the item's masks, decoded from the blob store."""
    loaded = nifti.load_nifti_bytes(blobs.get_bytes(item.image_digest), f"{item.case_id}.nii.gz")
    masks = {
        name: chunks.assemble_mask(labels.load_manifest(blobs, digest), blobs.get_bytes)
        for name, digest in item.manifests.items()
    }
    return ScanSample(item.case_id, loaded.data, loaded.geometry.affine, masks)


def train_and_measure(
    blobs: BlobStore,
    *,
    config: dict[str, object],
    structures: Sequence[str],
    train_items: Sequence[InteractiveItem],
    val_items: Sequence[InteractiveItem],
    initial: bytes | None,
    previous_weights: bytes | None,
    epochs: int,
    seed: int,
    progress: Callable[[float, str], None],
    should_stop: Callable[[], bool],
) -> Outcome:
    """Fine-tune on the training scans, then measure the candidate and the promoted weights on the held-out ones."""
    train_samples = [sample_of(blobs, item) for item in train_items]
    val_samples = [sample_of(blobs, item) for item in val_items]
    steps_run = 0

    def report(step: int, steps: int, loss: float) -> None:
        nonlocal steps_run
        steps_run = step
        progress(5 + 70 * step / steps, f"step {step}/{steps} loss {loss:.4f}")

    weights, _ = fine_tune(
        config,
        structures,
        train_samples,
        initial=initial,
        epochs=epochs,
        seed=seed,
        progress=report,
        should_stop=should_stop,
    )
    progress(78, f"measuring the candidate with {HELDOUT_CLICKS} simulated clicks on {len(val_samples)} scans")
    heldout_new = measure_clicks(weights, config, structures, val_samples, clicks=HELDOUT_CLICKS)
    heldout_previous: dict[str, object] = {}
    if previous_weights is not None:
        progress(88, "measuring the promoted version on the same held-out scans")
        heldout_previous = measure_clicks(previous_weights, config, structures, val_samples, clicks=HELDOUT_CLICKS)
    return Outcome(weights, heldout_new, heldout_previous, steps_run)
