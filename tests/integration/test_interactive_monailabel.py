"""The MONAI Label client (0.8.5) infers with clicks against a live maskloop server whose project has a
click-guided model: `/info/` lists it as DeepEdit, and every point form the clients send (DeepGrow's
foreground/background, DeepEdit's per-label lists with and without `label`, OHIF's points/point_labels/
label_prompt) returns, as the label file, exactly the mask the browser's `POST /api/scans/{id}/interactive` gives
for the same clicks on the same current mask.

Stack: PostgreSQL, Redis, a worker of the interactive queue, a uvicorn process (the client speaks HTTP). The model
is the tiny random-init network of test_interactive_api (serving is under test here, not accuracy).
"""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

mlclient = pytest.importorskip(
    "monailabel.client.client",
    reason="monailabel is not importable: `pip install --no-deps monailabel==0.8.5` (see the Makefile)",
    exc_type=ImportError,
)

from backend.core.errors import InvalidInput  # noqa: E402
from backend.imaging.phantom import Phantom  # noqa: E402
from backend.interactive import service as interactive  # noqa: E402
from backend.labels import service as labels  # noqa: E402
from backend.models import Structure  # noqa: E402
from backend.monailabel.service import click_prompts  # noqa: E402
from backend.projects import service as projects  # noqa: E402
from tests.conftest import PASSWORD  # noqa: E402
from tests.factories import small_phantom, upload_masks, upload_scan  # noqa: E402
from tests.integration.test_interactive_api import (  # noqa: E402
    MODEL,
    STRUCTURES,
    inside_point,
    placed,
    register_model,
    start_interactive_worker,
)
from tests.integration.worker_stack import ROOT, Stack, build_stack  # noqa: E402

pytestmark = pytest.mark.slow

MONAILabelClient = mlclient.MONAILabelClient
MONAILabelClientException = mlclient.MONAILabelClientException


@dataclass
class Live:
    """The stack, the server's MONAI Label URL, the scans and the schema's label values."""

    stack: Stack
    url: str
    phantom: Phantom
    scans: dict[str, int]
    values: dict[str, int]
    order: list[str]
    tmp: Path

    def client(self, client_id: str) -> Any:
        """A MONAILabelClient signed in as the annotator."""
        client = MONAILabelClient(self.url, tmpdir=tempfile.mkdtemp(dir=self.tmp), client_id=client_id)
        client.update_auth(client.auth_token("annotator@example.org", PASSWORD))
        return client

    def browser(self, case: str, body: dict[str, Any], base: np.ndarray) -> np.ndarray:
        """The whole mask after the browser applies its click answer to `base` (its current mask)."""
        previous = interactive.previous_from_mask(base)
        if previous is not None:
            body = {**body, "previous": previous.to_message()}
        response = self.stack.client.post(
            f"/api/scans/{self.scans[case]}/interactive", json=body, headers=self.stack.headers["annotator"]
        )
        assert response.status_code == 200, response.text
        return placed(response.json(), base)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{base}/api/health", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"uvicorn did not answer within 60 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Two scans (one with a liver version), the tiny model, an interactive worker and a uvicorn server."""
    tmp = tmp_path_factory.mktemp("interactive-monailabel")
    with build_stack(tmp) as stack:
        phantom = small_phantom(seed=5, lesion=False)
        lead = stack.headers["lead"]
        scans = {
            case: int(upload_scan(stack.client, lead, stack.project.id, phantom, case)["id"])
            for case in ("ml-a", "ml-b")
        }
        upload_masks(stack.client, lead, scans["ml-b"], {"liver": phantom.masks["liver"]}, phantom.affine)
        with stack.factory() as db:
            register_model(db, stack.blobs, stack.project.id)
            schema = projects.structures_of(db, stack.project.id)
            values = {s.name: s.label_value for s in schema}
            order = [s.name for s in labels.default_paint_order(schema)]
        start_interactive_worker(stack, "ml-clicks")
        port = _free_port()
        log = tmp / "server.log"
        env = {**stack.env, "PYTHONUNBUFFERED": "1", "MASKLOOP_FRONTEND_DIST": str(tmp / "no-frontend")}
        command = [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [*command, "--log-level", "warning"], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(base, process, log)
            yield Live(stack, f"{base}/monailabel/{stack.project.slug}/", phantom, scans, values, order, tmp)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def _label_map(path: str) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(Path(path).read_bytes())).dataobj)


def test_info_advertises_the_model_as_deepedit(live: Live) -> None:
    info = live.client("info").info()
    model = info["models"][MODEL]
    assert model["type"] == "deepedit" and model["dimension"] == 3
    assert model["labels"] == {**{name: live.values[name] for name in STRUCTURES}, "background": 0}
    assert "background" in info["labels"] and "liver" in info["labels"]
    assert MODEL not in info["trainers"]


def _forms(live: Live, p: list[int], n: list[int]) -> list[dict[str, Any]]:
    liver = live.values["liver"]
    return [
        # 3D Slicer, DeepGrow-style (also what it sends for a deepedit model with one label)
        {"label": "liver", "foreground": [p], "background": [n], "result_extension": ".nrrd", "result_dtype": "uint8"},
        # 3D Slicer, DeepEdit multi-label: every label's points, negatives on "background", the current `label`
        {"liver": [p], "spleen": [], "kidney_left": [], "background": [n], "label": "liver"},
        # OHIF, VISTA3D-style prompts
        {"points": [p, n], "point_labels": [1, 0], "label_prompt": [liver], "result_compress": False},
        # OHIF, DeepEdit: per-label lists, no `label`
        {"background": [n], "liver": [p]},
    ]


@pytest.mark.parametrize("case", ["ml-a", "ml-b"])
def test_every_click_form_gives_the_browser_s_mask(live: Live, case: str) -> None:
    liver = live.phantom.masks["liver"]
    p = inside_point(liver)
    n = inside_point(live.phantom.masks["spleen"])
    # ml-b has a liver version (the head): both paths refine that mask; ml-a has none: both start empty.
    base = liver.copy() if case == "ml-b" else np.zeros_like(liver)
    expected = live.browser(case, {"structure": "liver", "positive": [p], "negative": [n]}, base)
    client = live.client(f"slicer-{case}")
    for params in _forms(live, p, n):
        path, answer = client.infer(MODEL, case, params)
        assert answer["label_names"] == {"liver": live.values["liver"]}, params
        got = _label_map(path)
        assert got.shape == liver.shape
        assert np.array_equal(got == live.values["liver"], expected), params
        assert set(np.unique(got)) <= {0, live.values["liver"]}


def test_several_labels_at_once_paint_in_schema_order(live: Live) -> None:
    p, q = inside_point(live.phantom.masks["liver"]), inside_point(live.phantom.masks["spleen"])
    zeros = np.zeros(live.phantom.masks["liver"].shape, dtype=bool)
    masks = {
        "liver": live.browser("ml-a", {"structure": "liver", "positive": [p]}, zeros),
        "spleen": live.browser("ml-a", {"structure": "spleen", "positive": [q]}, zeros),
    }
    expected = np.zeros(zeros.shape, dtype=np.uint8)
    for name in (n for n in live.order if n in masks):
        expected[masks[name]] = live.values[name]
    path, answer = live.client("ohif").infer(MODEL, "ml-a", {"background": [], "liver": [p], "spleen": [q]})
    assert answer["label_names"] == {"liver": live.values["liver"], "spleen": live.values["spleen"]}
    assert np.array_equal(_label_map(path), expected)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"label": "liver", "foreground": [[64, 0, 0]]}, "outside the volume"),
        ({"label": "gall_bladder", "foreground": [[5, 5, 5]]}, "does not know"),
        ({"label": "not_a_structure", "foreground": [[5, 5, 5]]}, "not a structure"),
        ({"result_extension": ".nrrd"}, "needs clicks"),
        ({"points": [[5, 5, 5]], "point_labels": [1, 0]}, "one integer per point"),
    ],
)
def test_bad_clicks_are_422_for_the_client(live: Live, params: dict[str, Any], words: str) -> None:
    with pytest.raises(MONAILabelClientException) as failed:
        live.client("bad").infer(MODEL, "ml-a", params)
    assert "Status: 422" in str(failed.value.msg) and words in str(failed.value.msg)


def _schema() -> list[Structure]:
    names = ("liver", "spleen", "pancreas", "pancreas_head")
    return [
        Structure(
            name=name, label_value=i + 1, position=i, color="#ffffff", group="", aliases=["hepar"] if i == 0 else []
        )
        for i, name in enumerate(names)
    ]


def test_click_forms_are_read_as_the_clients_mean_them() -> None:
    schema, known = _schema(), ["liver", "spleen", "pancreas_head"]
    p, q, n = [1, 2, 3], [4, 5, 6], [7, 8, 9]
    read = lambda params: [(c.structure, c.positive, c.negative) for c in click_prompts(params, schema, known)]  # noqa: E731
    assert read({"label": "liver", "foreground": [p], "background": [n]}) == [("liver", [p], [n])]
    assert read({"label": "hepar", "foreground": [p]}) == [("liver", [p], [])]
    assert read({"label": "liver", "liver": [p, q], "spleen": [n], "background": [n]}) == [("liver", [p, q], [n])]
    assert read({"liver": [p], "spleen": [q], "pancreas": [], "background": [n]}) == [
        ("liver", [p], [n]),
        ("spleen", [q], [n]),
    ]
    assert read({"points": [p, n, q], "point_labels": [1, 0, -1], "label_prompt": [2]}) == [("spleen", [p], [n])]
    assert read({"points": [p], "label": "pancreas_head"}) == [("pancreas_head", [p], [])]
    with pytest.raises(InvalidInput, match="must name their structure"):
        click_prompts({"foreground": [p]}, schema, known)
    assert read({"foreground": [p], "label": "spleen"}) == [("spleen", [p], [])]
    assert [c.structure for c in click_prompts({"foreground": [p]}, schema, ["liver"])] == ["liver"]
    with pytest.raises(InvalidInput, match="label value"):
        click_prompts({"points": [p], "label_prompt": [99]}, schema, known)
    with pytest.raises(InvalidInput, match="list of"):
        click_prompts({"label": "liver", "foreground": "1,2,3"}, schema, known)
