"""The loop simulation bench runs without the test suite (issue 19): its stack lives in ``bench.worker_stack``."""

from __future__ import annotations

import subprocess
import sys

from bench.loop_models import MODELS, STRUCTURES


def test_the_loop_bench_imports_nothing_from_tests() -> None:
    code = "import sys, bench.loop; print(sorted(m for m in sys.modules if m == 'tests' or m.startswith('tests.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_loop_models_ship_with_their_sidecars() -> None:
    import hashlib
    import json

    for model in MODELS:
        meta = json.loads(model.weights.with_suffix(".json").read_text())
        data = model.weights.read_bytes()
        assert meta["structures"] == list(STRUCTURES) and len(data) < 5_000_000
        assert meta["weights_sha256"] == hashlib.sha256(data).hexdigest()
