"""Attention recall on a built cohort is above random (issue 19): real models, real worker, the real ranking."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.loop import measure_round1
from bench.loop_models import STRUCTURES
from tests.integration.worker_stack import Stack, build_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with build_stack(tmp_path_factory.mktemp("recall")) as built:
        built.start_worker("recall")
        yield built


def test_priorities_find_the_ai_errors_better_than_random_order(stack: Stack) -> None:
    result = measure_round1(stack, cases=8, seed=7, variation=1.5)
    assert result.pairs == 8 * len(STRUCTURES)
    assert result.error_pairs > 0, result
    assert result.recall_top20 > 0.2, result  # random order puts 20 % of the error pairs in the top 20 %
