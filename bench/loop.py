"""The loop simulation (issue 19, item 4): do priorities find the AI's errors, and does each round need less?

A real stack (PostgreSQL, Redis, one Celery worker process, the API: ``bench.worker_stack``) holds one project per
cohort seed. Each cohort is ``MASKLOOP_BENCH_LOOP_CASES`` phantoms (default 40; 64×64×32 at 5.25×5.25×8 mm, varied
anatomy and lesions, ``bench.loop_models.COHORT_VARIATION``) imported through the API. Two real MONAI UNets that
err differently (different seeds and pretraining phantoms, ``bench.loop_models``) are registered with their
weights through the API (the weight check runs) and pre-annotate every scan; the draft model (``loop_unet_a``)
is the one the loop retrains, the second opinion (``loop_unet_b``) stays. The attention step runs on every open
scan as in production and the ranked ``GET /api/projects/{id}/priorities`` list is read back; the AI draft of each
(scan, structure) pair (the ten structures both models predict) is compared with the phantom's ground truth.

Each round: the ranking; a simulated annotator takes the top 10 % of pairs by priority and, in each scan they open
for those, corrects every structure to ground truth through the real API (start, a ``human`` version, submit; the
lead starts the review and approves): an approved version is then right as a whole, as a lead's approval says.
Then the draft model is fine-tuned from its promoted version on every approved version so far (half held out,
``MASKLOOP_BENCH_LOOP_EPOCHS`` epochs, default 4) and the lead promotes the candidate if the project's promotion
gate passes. Only what changed is redone in the next round, as production would: the open scans are
pre-annotated again and their attention recomputed only when a new draft model version was promoted.
Three rounds (``MASKLOOP_BENCH_LOOP_ROUNDS``), cohort seeds 1 and 2 (``MASKLOOP_BENCH_LOOP_SEEDS``), in turn.

- ``attention_error_recall_top20``: round 1, the share of pairs with AI Dice < 0.9 in the top 20 % by priority
  (pairs without an attention row rank last); random order gives 0.2; goal ≥ 0.6; the smaller over the seeds, with
  its ceiling (the top 20 % of pairs over the error pairs, at most 1). ``..._top10`` and
  ``attention_error_voxel_recall_top20`` (the share of AI error voxels, FP + FN) alongside.
- ``loop_dice_gain_round3``: mean AI-vs-truth Dice over the pairs of the scans still open at the last round, last
  round minus round 1 (same pairs both times); the smaller over the seeds; goal > 0.
- ``loop_corrected_voxels_ratio_round3``: voxels the annotator changed, last round / round 1; the larger over the
  seeds; goal < 1.

With ten structures a scan, the top 10 % of pairs spread over most open scans, so round 1 approves about 70 % of
the cohort and round 3 may rank a single scan: ``loop_dice_gain_round2`` (over the pairs open at round 2) and
``loop_corrected_voxels_per_scan_ratio_round3`` (per opened scan) are printed alongside. The attention priority is
a share of each structure's volume, so a large organ with a thin band of boundary errors ranks low although it
holds many error voxels: ``attention_error_voxel_recall_top20`` stays near random by design.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.imaging.phantom import generate_phantom
from bench import Row, loop_models
from bench import loop_api as api
from bench.loop_api import Clock, Pair
from bench.worker_stack import Stack, build_stack

CORRECTED_SHARE = 0.1
NAN = float("nan")
# Fine-tuning the promoted draft model on approved versions: whole-scan patches (the model space is the scan grid),
# a gentle learning rate with a warm-up, a few passes (``training.warmup_fraction``, worker/models/training.py).
FINE_TUNE = {"patch_size": list(loop_models.SHAPE), "samples_per_volume": 2, "batch_size": 2, "learning_rate": 5e-4}


@dataclass(frozen=True)
class Recall:
    """Round-1 attention recall of one cohort."""

    pairs: int
    error_pairs: int
    recall_top20: float
    recall_top10: float
    voxel_recall_top20: float
    mean_dice: float
    seconds: float

    @property
    def ceiling_top20(self) -> float:
        """The best any order can do: the top 20 % of the pairs over the error pairs, at most 1."""
        return min(1.0, max(1, round(0.2 * self.pairs)) / self.error_pairs) if self.error_pairs else NAN


@dataclass
class Cohort:
    """One cohort's project, scans with their truths, and the two registered models."""

    project: int
    truths: dict[int, dict[str, np.ndarray]]
    affines: dict[int, np.ndarray]
    draft_model: int
    draft: int
    second: int
    clock: Clock = field(default_factory=Clock)
    masks: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # label version -> structure -> mask


@dataclass
class View:
    """One round's ranking and the AI drafts scored against truth."""

    priority: dict[Pair, float]
    drafts: dict[int, int]
    masks: dict[Pair, np.ndarray]
    dice: dict[Pair, float]
    errors: dict[Pair, int]
    ranked: list[Pair] = field(default_factory=list)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _model_body(model: loop_models.LoopModel) -> tuple[dict[str, Any], bytes]:
    """A starting model's registration body (from its sidecar) and weights."""
    meta = json.loads(model.weights.with_suffix(".json").read_text())
    body = {key: meta[key] for key in ("architecture", "structures", "preprocessing", "inference")}
    body["config"] = {**meta["config"], "training": FINE_TUNE}
    return body, model.weights.read_bytes()


def ensure_models() -> None:
    """Pretrain the starting models whose weights are missing (``python -m bench.loop_models`` does the same)."""
    for model in loop_models.MODELS:
        if not model.weights.exists():
            print(f"pretraining {model.name} (missing {model.weights})")
            loop_models.pretrain(model, verbose=False)


def import_cohort(stack: Stack, cases: int, seed: int, variation: float = loop_models.COHORT_VARIATION) -> Cohort:
    """A project for the cohort: the phantoms imported through the API, the two models registered."""
    clock = Clock()
    project = api.new_project(stack, f"loop-{seed}-{time.monotonic_ns()}")
    truths: dict[int, dict[str, np.ndarray]] = {}
    affines: dict[int, np.ndarray] = {}
    with clock.phase("import"):
        for i in range(cases):
            phantom = generate_phantom(
                loop_models.SHAPE, loop_models.SPACING, seed=seed * 1000 + i, variation=variation, lesion=bool(i % 2)
            )
            scan = api.upload_scan(stack, project, f"s{seed}-{i:03d}", phantom.volume, phantom.affine)
            truths[scan] = {name: phantom.masks[name] for name in loop_models.STRUCTURES}
            affines[scan] = phantom.affine
    with clock.phase("register models"):
        a, b = loop_models.MODELS
        draft_model, draft = api.register_model(stack, project, a.name, *_model_body(a))
        _second_model, second = api.register_model(stack, project, b.name, *_model_body(b))
    return Cohort(project, truths, affines, draft_model, draft, second, clock)


def rank(stack: Stack, cohort: Cohort, scan_ids: list[int], predict: list[int]) -> View:
    """Pre-annotate the scans with the ``predict`` model versions (none: their predictions stand) and recompute
    their attention, read the ranking, and score the draft model's masks against truth."""
    clock = cohort.clock
    if predict:
        with clock.phase("pre-annotation"):
            api.preannotate(stack, cohort.project, predict, scan_ids)
        with clock.phase("attention"):
            api.attention(stack, cohort.project, [cohort.draft, cohort.second], scan_ids)
    with clock.phase("ranking"):
        priority = api.priorities(stack, cohort.project)
        drafts = api.drafts(stack, cohort.draft, scan_ids)
    view = View(priority, drafts, {}, {}, {})
    with clock.phase("reading drafts"):
        for scan_id in scan_ids:
            version = drafts[scan_id]
            if version not in cohort.masks:  # a draft that did not change is not read again
                cohort.masks[version] = {n: api.read_mask(stack, version, n) for n in loop_models.STRUCTURES}
            for name in loop_models.STRUCTURES:
                ai, truth = cohort.masks[version][name], cohort.truths[scan_id][name]
                view.masks[(scan_id, name)] = ai
                view.dice[(scan_id, name)] = _dice(ai, truth)
                view.errors[(scan_id, name)] = int((ai ^ truth).sum())
    view.ranked = sorted(view.dice, key=lambda p: (-priority.get(p, 0.0), p))
    return view


def recall(view: View, seconds: float = NAN) -> Recall:
    """How many of the AI's error pairs (Dice < 0.9) and error voxels the top of the ranking holds."""
    bad = {p for p, d in view.dice.items() if d < 0.9}

    def head(top: float) -> set[Pair]:
        return set(view.ranked[: max(1, round(top * len(view.ranked)))])

    total_errors = sum(view.errors.values())
    return Recall(
        pairs=len(view.ranked),
        error_pairs=len(bad),
        recall_top20=len(bad & head(0.2)) / len(bad) if bad else NAN,
        recall_top10=len(bad & head(0.1)) / len(bad) if bad else NAN,
        voxel_recall_top20=sum(view.errors[p] for p in head(0.2)) / total_errors if total_errors else NAN,
        mean_dice=float(np.mean(list(view.dice.values()))),
        seconds=seconds,
    )


def measure_round1(stack: Stack, cases: int, seed: int, variation: float = loop_models.COHORT_VARIATION) -> Recall:
    """Import a cohort, pre-annotate with both models, compute attention, and score the ranking against truth."""
    started = time.perf_counter()
    cohort = import_cohort(stack, cases, seed, variation)
    view = rank(stack, cohort, sorted(cohort.truths), [cohort.second, cohort.draft])
    return recall(view, time.perf_counter() - started)


def correct_and_approve(stack: Stack, cohort: Cohort, view: View) -> tuple[int, list[int]]:
    """The annotator opens the scans of the top 10 % pairs and corrects each of them to truth as a whole; the lead
    approves. Returns (voxels changed, approved versions)."""
    chosen = view.ranked[: max(1, round(CORRECTED_SHARE * len(view.ranked)))]
    changed, approved = 0, []
    with cohort.clock.phase("correcting and approving"):
        for scan_id in sorted({scan for scan, _ in chosen}):
            changed += sum(view.errors[(scan_id, n)] for n in loop_models.STRUCTURES)
            approved.append(api.approve_corrected(stack, scan_id, cohort.truths[scan_id], cohort.affines[scan_id]))
    return changed, approved


def retrain(stack: Stack, cohort: Cohort, version_ids: list[int], epochs: int, seed: int) -> dict[str, Any]:
    """Fine-tune the promoted draft model on the approved versions; the lead promotes it when the gate passes."""
    body = {"label_version_ids": version_ids, "epochs": epochs, "heldout_fraction": 0.5, "seed": seed}
    with cohort.clock.phase("training"):
        result = api.train(stack, cohort.project, cohort.draft_model, body)
    if result.get("promoted"):
        cohort.draft = int(result["model_version_id"])
    return result


def simulate(stack: Stack, cases: int, seed: int, rounds: int, epochs: int) -> dict[str, Any]:
    """The whole loop on one cohort: per round the ranking, corrections, approvals and a retraining."""
    started = time.perf_counter()
    cohort = import_cohort(stack, cases, seed)
    open_scans = sorted(cohort.truths)
    approved: list[int] = []
    views: list[View] = []
    changed: list[int] = []
    opened: list[int] = []
    decisions: list[str] = []
    first: Recall | None = None
    predict = [cohort.second, cohort.draft]  # the draft model last: its version is each scan's head
    for number in range(1, rounds + 1):
        round_started = time.perf_counter()
        view = rank(stack, cohort, open_scans, predict)
        if first is None:
            first = recall(view, time.perf_counter() - round_started)
        voxels, versions = correct_and_approve(stack, cohort, view)
        views.append(view)
        changed.append(voxels)
        opened.append(len(versions))
        approved += versions
        done = {scan for scan, _ in view.ranked[: max(1, round(CORRECTED_SHARE * len(view.ranked)))]}
        open_scans = [s for s in open_scans if s not in done]
        predict = []
        if number < rounds and len(approved) >= 2:
            before = cohort.draft
            decisions.append(str(retrain(stack, cohort, approved, epochs, seed).get("decision", "")))
            predict = [cohort.draft] if cohort.draft != before else []
        decision = "; " + decisions[-1] if number < rounds and decisions else ""
        print(
            f"seed {seed} round {number}: mean AI Dice {np.mean(list(view.dice.values())):.4f} over "
            f"{len(view.dice)} pairs, corrected {voxels} voxels in {len(versions)} scans, "
            f"{time.perf_counter() - round_started:.0f} s{decision}",
            flush=True,
        )
    assert first is not None
    last = views[-1]
    common = list(last.dice)
    gain = float(np.mean([last.dice[p] for p in common]) - np.mean([views[0].dice[p] for p in common]))
    ratio = changed[-1] / changed[0] if changed[0] else NAN
    # Per opened scan: the pool of open scans shrinks each round, so the raw ratio also counts fewer scans.
    per_scan = (changed[-1] / opened[-1]) / (changed[0] / opened[0]) if changed[0] and opened[-1] else NAN
    dice = [float(np.mean([v.dice[p] for p in common])) for v in views]
    # The same gain one round earlier, over the many more pairs still open at round 2 (round 3 may hold few scans).
    wide = list(views[1].dice) if len(views) > 1 else common
    gain2 = float(np.mean([views[1 if len(views) > 1 else 0].dice[p] - views[0].dice[p] for p in wide]))
    print(f"seed {seed}: {time.perf_counter() - started:.0f} s: {cohort.clock.summary()}", flush=True)
    return {
        "recall": first,
        "gain": gain,
        "gain_round2": gain2,
        "pairs_last_round": len(common),
        "ratio": ratio,
        "per_scan_ratio": per_scan,
        "changed": changed,
        "opened": opened,
        "dice_same_pairs": dice,
        "decisions": decisions,
    }


def run() -> list[Row]:
    """The loop simulation on the cohort seeds (one stack, one project per seed)."""
    cases = int(os.environ.get("MASKLOOP_BENCH_LOOP_CASES", "40"))
    rounds = int(os.environ.get("MASKLOOP_BENCH_LOOP_ROUNDS", "3"))
    epochs = int(os.environ.get("MASKLOOP_BENCH_LOOP_EPOCHS", "4"))
    seeds = range(1, 1 + int(os.environ.get("MASKLOOP_BENCH_LOOP_SEEDS", "2")))
    started = time.perf_counter()
    ensure_models()
    results = []
    with tempfile.TemporaryDirectory(prefix="maskloop-loop-") as tmp, build_stack(Path(tmp)) as stack:
        stack.start_worker("loop")
        for seed in seeds:
            result = simulate(stack, cases, seed, rounds, epochs)
            print(f"seed {seed}: {result}", flush=True)
            results.append(result)
    seconds = time.perf_counter() - started
    load = os.getloadavg()[0]
    recalls: list[Recall] = [r["recall"] for r in results]
    top20 = min(r.recall_top20 for r in recalls)
    gain = min(float(r["gain"]) for r in results)
    ratio = max(float(r["ratio"]) for r in results)
    return [
        Row(
            "attention_error_recall_top20",
            "round 1: AI-error pairs (Dice < 0.9) in the top 20 % by priority",
            top20,
            "share",
            "≥ 0.6 (random 0.2)",
            top20 >= 0.6,
        ),
        Row(
            "attention_error_recall_top20_ceiling",
            "round 1: the best any order can do (top 20 % of pairs / error pairs, at most 1)",
            min(r.ceiling_top20 for r in recalls),
            "share",
        ),
        Row(
            "attention_error_recall_top10",
            "round 1: AI-error pairs in the top 10 % by priority",
            min(r.recall_top10 for r in recalls),
            "share",
            "random 0.1",
        ),
        Row(
            "attention_error_voxel_recall_top20",
            "round 1: AI error voxels in the top 20 % pairs by priority",
            min(r.voxel_recall_top20 for r in recalls),
            "share",
            "random ≈ 0.2",
        ),
        Row("loop_dice_gain_round3", f"AI-vs-truth Dice, round {rounds} − round 1", gain, "Dice", "> 0", gain > 0),
        Row(
            "loop_dice_gain_round2",
            "AI-vs-truth Dice, round 2 − round 1, over the pairs open at round 2 (the smaller over the seeds)",
            min(float(r["gain_round2"]) for r in results),
            "Dice",
        ),
        Row(
            "loop_corrected_voxels_ratio_round3",
            f"voxels the annotator changed, round {rounds} / round 1",
            ratio,
            "ratio",
            "< 1",
            ratio < 1,
        ),
        Row(
            "loop_corrected_voxels_per_scan_ratio_round3",
            f"voxels changed per opened scan, round {rounds} / round 1 (the larger over the seeds)",
            max(float(r["per_scan_ratio"]) for r in results),
            "ratio",
        ),
        Row(
            "loop_simulation_seconds",
            f"the loop simulation, {len(results)} seeds (1-min load {load:.1f} at the end)",
            seconds,
            "s",
            "≤ 900",
            seconds <= 900,
        ),
    ]
