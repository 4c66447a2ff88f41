"""MONAI Label-compatible endpoints at PanTS scale: next sample (active learning) and a combined-label save.

Set-up: a fresh PostgreSQL database migrated to head and bulk-seeded with `bench.review_scale.seed` (36,390 scans
by default, the PanTS project `pants-scale` with its people, tasks and history); a real uvicorn server on it. Then
one real 512×512×300 phantom CT (`backend.imaging.phantom`) is imported through `POST /api/projects/{id}/scans`
and its head version of 28 structures through `POST /api/scans/{id}/versions` (kind "import"), as core_spine does.
The head's masks are those of a combined uint8 label map (every structure painted, the smallest last; a part's
voxels also count for its `inside` parent), so a combined map re-uploaded unchanged would reproduce the head.

Figures (results.json keys):

* `monailabel_next_sample_p95_ms`: `POST /monailabel/pants-scale/activelearning/priority` (JSON `{client_id}`)
  called in turn by the 10 annotators, each with its own client_id; the edit lease the call takes is released
  after each call (`DELETE /api/scans/{id}/lease`, unmeasured), as review_scale does for next-task. Client-side
  wall time over loopback after warm-up calls (goal ≤ 20 ms; MONAI Label 0.8.5: 3,274 ms p95 at 36k).
* `monailabel_save_label_p50_ms`: `PUT /monailabel/pants-scale/datastore/label?image=<case id>&tag=final` of the
  combined map as a uint8 `.nii.gz` (gzip level 6), multipart `params` (label_info, client_id) + `label`, in which
  one structure (the liver: a brush stroke added or erased, alternately, on background/liver voxels only) differs
  from the head. The client first fetches the image (`GET datastore/image`, unmeasured); each save builds on the
  previous one, so the server compares it with the map it kept from that save (labels' map_cache). Body encoded
  before the timer starts (goal ≤ 300 ms; MONAI Label's overwrite: 316 ms at 36k). Every reply's version is checked:
  only the liver changed, with the expected voxel count.
* `monailabel_save_label_first_ms`: the first (warm-up, unscored) save, whose base's map is composed from its 28
  masks: what a client's first save after fetching only the image costs.

`python -m bench.monailabel --quick` seeds 2,000 scans and uses a 256×256×120 volume, printing the figures without
touching results.json (`--json PATH` also writes them as results.json entries to PATH).
`MASKLOOP_BENCH_REVIEW_SCANS` sets the scale as for review_scale.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from bench import NO_GOAL, Row, percentile

FULL_SCANS = 36_390
QUICK_SCANS = 2_000
FULL_SHAPE = (512, 512, 300)
QUICK_SHAPE = (256, 256, 120)
SPACING = (0.75, 0.75, 1.0)
SEED = 20260
CASE_ID = "BENCH_ML_0001"
EDITED = "liver"
SAMPLE_REQUESTS = 60
SAMPLE_WARMUP = 5
SAVES = 20
SAVE_WARMUP = 2
NEXT_GOAL_MS = 20.0
SAVE_GOAL_MS = 300.0
GZIP_LEVEL = 6


class BenchError(RuntimeError):
    """The benchmark could not run, or the server answered something wrong."""


def _log(message: str) -> None:
    """A progress line on stderr."""
    print(f"  [monailabel] {message}", file=sys.stderr, flush=True)


def _check(response: httpx.Response, what: str, ok: tuple[int, ...] = (200,)) -> httpx.Response:
    """Raise BenchError unless the response status is one of `ok`."""
    if response.status_code not in ok:
        raise BenchError(f"{what}: HTTP {response.status_code}: {response.text[:1000]}")
    return response


def combined_head(
    shape: tuple[int, int, int], schema: list[dict[str, Any]]
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(combined uint8 map, the 28 masks it decodes to, the CT volume, affine) of a phantom of `shape`."""
    from bench.core_spine import extra_structures

    phantom = generate_phantom(shape, SPACING, seed=SEED)
    drawn = dict(phantom.masks)
    drawn.update(extra_structures(shape))
    index = {s["name"]: int(s["label_value"]) for s in schema}
    parents = {s["name"]: s["inside"] for s in schema if s.get("inside")}
    combined = np.zeros(shape, dtype=np.uint8)
    for name in sorted(index, key=lambda n: -int(np.count_nonzero(drawn[n]))):  # the smallest painted last
        combined[drawn[name]] = index[name]
    masks = {name: combined == value for name, value in index.items()}
    for child, parent in parents.items():
        masks[parent] |= masks[child]
    return combined, masks, phantom.volume, phantom.affine


def _brush(combined: np.ndarray, value: int, rng: np.random.Generator, add: bool) -> np.ndarray:
    """A copy of the map with a disc (radius 8, 5 slices) added to (on background) or erased from structure `value`."""
    out = combined.copy()
    nx, ny, nz = out.shape
    r, half = 8, 2
    zs = np.flatnonzero((out == value).any(axis=(0, 1)))
    for _ in range(200):
        k = int(rng.integers(max(half, int(zs[0])), min(nz - half, int(zs[-1]) + 1)))
        points = np.argwhere(out[r : nx - r, r : ny - r, k] == value) + r
        if len(points) == 0:
            continue
        i, j = (int(v) for v in points[int(rng.integers(len(points)))])
        di, dj = np.ogrid[-r : r + 1, -r : r + 1]
        disc = np.broadcast_to((di * di + dj * dj <= r * r)[:, :, None], (2 * r + 1, 2 * r + 1, 2 * half + 1))
        region = out[i - r : i + r + 1, j - r : j + r + 1, k - half : k + half + 1]
        target = disc & (region == 0) if add else disc & (region == value)
        if target.any():
            region[target] = value if add else 0
            return out
    raise BenchError(f"found nowhere to paint structure {value}")


def _login(client: httpx.Client, email: str) -> dict[str, str]:
    """Bearer headers of a seeded user."""
    from bench.review_scale import PASSWORD

    response = _check(client.post("/api/auth/login", json={"email": email, "password": PASSWORD}), f"login {email}")
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _scan_ids(url: str, project_id: int) -> dict[str, int]:
    """case id -> scan id of the project."""
    from bench.review_scale import _pg_conninfo

    with psycopg.connect(_pg_conninfo(url)) as conn:
        rows = conn.execute("SELECT case_id, id FROM scans WHERE project_id = %s", (project_id,)).fetchall()
    return {str(case): int(sid) for case, sid in rows}


def next_samples(
    client: httpx.Client, prefix: str, annotators: list[dict[str, str]], ids: dict[str, int], n: int, project_id: int
) -> tuple[list[float], list[float]]:
    """Wall times (ms) of `n` priority next-sample calls by the annotators in turn, each followed by maskloop's own
    next-task call by the same annotator (the same claim through maskloop's API, for a same-run ratio); every
    lease is released after its call, unmeasured."""
    times: list[float] = []
    own_times: list[float] = []
    served = 0
    for i in range(SAMPLE_WARMUP + n):
        who = i % len(annotators)
        headers = annotators[who]
        started = time.perf_counter()
        response = client.post(
            f"{prefix}/activelearning/priority", json={"client_id": f"bench-client-{who + 1}"}, headers=headers
        )
        elapsed = (time.perf_counter() - started) * 1000.0
        _check(response, "activelearning/priority", (200, 204, 404))
        if response.status_code == 200:
            served += 1
            case_id = str(response.json()["id"])
            scan_id = ids.get(case_id)
            if scan_id is None:
                raise BenchError(f"activelearning/priority returned unknown image id {case_id!r}")
            _check(client.delete(f"/api/scans/{scan_id}/lease", headers=headers), f"release lease of {case_id}")
        started = time.perf_counter()
        own = client.post(f"/api/projects/{project_id}/next-task", json={"kind": "annotate"}, headers=headers)
        own_elapsed = (time.perf_counter() - started) * 1000.0
        _check(own, "next-task", (200, 204))
        if own.status_code == 200:
            _check(client.delete(f"/api/scans/{own.json()['scan_id']}/lease", headers=headers), "release lease")
        if i >= SAMPLE_WARMUP:
            times.append(elapsed)
            own_times.append(own_elapsed)
    _log(f"next sample: {served} of {SAMPLE_WARMUP + n} calls served an image")
    return times, own_times


def _import_scan(
    client: httpx.Client, project_id: int, volume: np.ndarray, affine: np.ndarray, masks: dict[str, np.ndarray]
) -> tuple[int, int]:
    """Import the CT and its 28-structure head through the API: (scan id, head version id)."""
    from bench.core_spine import _encode_all

    started = time.perf_counter()
    scan = client.post(
        f"/api/projects/{project_id}/scans",
        files={"file": (f"{CASE_ID}.nii.gz", to_nifti_gz(volume, affine), "application/gzip")},
        data={"case_id": CASE_ID},
    )
    scan_id = int(_check(scan, "import CT", (201,)).json()["id"])
    files = [("files", (f"{k}.nii.gz", v, "application/gzip")) for k, v in _encode_all(masks, affine).items()]
    version = client.post(
        f"/api/scans/{scan_id}/versions", files=files, data={"kind": "import", "message": "bench head"}
    )
    head = _check(version, "import head", (201,)).json()
    for name, mask in masks.items():
        stored = next(int(s["voxel_count"]) for s in head["structures"] if s["name"] == name)
        if stored != int(np.count_nonzero(mask)):
            raise BenchError(f"the head stored {stored} voxels of {name}, expected {int(np.count_nonzero(mask))}")
    _log(f"CT and 28-structure head imported in {time.perf_counter() - started:.1f} s (scan {scan_id})")
    return scan_id, int(head["id"])


def save_labels(
    client: httpx.Client,
    prefix: str,
    headers: dict[str, str],
    combined: np.ndarray,
    affine: np.ndarray,
    schema: list[dict[str, Any]],
    n: int,
) -> tuple[list[float], list[int], float]:
    """Wall times (ms) and body sizes of `n` label saves, each differing from the head in the liver only, and the
    time of the first (warm-up) save, the one the server answers without a kept map of its base."""
    value = next(int(s["label_value"]) for s in schema if s["name"] == EDITED)
    label_info = [{"name": s["name"], "idx": int(s["label_value"])} for s in schema]
    params = json.dumps({"label_info": label_info, "client_id": "bench-saver"})
    image = client.get(
        f"{prefix}/datastore/image", params={"image": CASE_ID, "client_id": "bench-saver"}, headers=headers
    )
    _check(image, "datastore/image")
    rng = np.random.default_rng(SEED)
    current = combined
    times: list[float] = []
    sizes: list[int] = []
    first = math.nan
    for i in range(SAVE_WARMUP + n):
        current = _brush(current, value, rng, add=i % 2 == 0)
        body = to_nifti_gz(current, affine, compresslevel=GZIP_LEVEL)
        request = client.build_request(
            "PUT",
            f"{prefix}/datastore/label",
            params={"image": CASE_ID, "tag": "final"},
            data={"params": params},
            files={"label": (f"/home/user/labels/{CASE_ID}.nii.gz", body, "application/octet-stream")},
            headers=headers,
        )
        request.read()
        started = time.perf_counter()
        response = client.send(request)
        elapsed = (time.perf_counter() - started) * 1000.0
        first = elapsed if i == 0 else first
        reply = _check(response, f"datastore/label save {i}").json()
        if "version" in reply:  # maskloop's extra: check that only the edited structure changed, voxel for voxel
            version = _check(client.get(f"/api/versions/{reply['version']}"), "get version").json()
            changed = sorted(s["name"] for s in version["structures"] if s["changed"])
            count = next(int(s["voxel_count"]) for s in version["structures"] if s["name"] == EDITED)
            if changed != [EDITED] or count != int(np.count_nonzero(current == value)):
                raise BenchError(f"save {i}: version {reply['version']} changed {changed}, {EDITED} {count} voxels")
        if i >= SAVE_WARMUP:
            times.append(elapsed)
            sizes.append(len(request.content))
    return times, sizes, first


def _verify(client: httpx.Client, scan_id: int, head: int, combined: np.ndarray, value: int) -> int:
    """Check the last saved version: one more than the imported ones, only the liver changed, its voxels right."""
    versions = _check(client.get(f"/api/scans/{scan_id}/versions"), "list versions").json()
    latest = max(versions, key=lambda v: int(v["id"]))
    version = _check(client.get(f"/api/versions/{latest['id']}"), "get version").json()
    changed = sorted(s["name"] for s in version["structures"] if s["changed"])
    liver = next(int(s["voxel_count"]) for s in version["structures"] if s["name"] == EDITED)
    if int(version["id"]) == head or changed != [EDITED] or liver != int(np.count_nonzero(combined == value)):
        raise BenchError(f"last save: version {version['id']} changed {changed}, {EDITED} {liver} voxels")
    return int(version["id"])


def run(n_scans: int | None = None, shape: tuple[int, int, int] = FULL_SHAPE) -> list[Row]:
    """Seed a PanTS-scale project, serve it, import one real scan with a 28-structure head and time the endpoints."""
    from bench.core_spine import uvicorn_server
    from bench.review_scale import _database_at, seed

    n_scans = n_scans or int(os.environ.get("MASKLOOP_BENCH_REVIEW_SCANS", FULL_SCANS))
    schema = json.loads((Path(__file__).resolve().parents[1] / "backend/projects/pants_schema.json").read_text())
    structures = schema["structures"]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maskloop-monailabel-")))
        url = stack.enter_context(_database_at(f"maskloop_monailabel_{os.getpid()}", "head"))
        seeded = seed(url, n_scans)
        _log(f"seeded {n_scans:,} scans in {seeded.seconds:.1f} s")
        base, _log_path = stack.enter_context(uvicorn_server(url, workdir))
        client = stack.enter_context(httpx.Client(base_url=base, timeout=httpx.Timeout(600.0)))
        paths = set(client.get("/openapi.json").json().get("paths", {}))
        if not any(p.startswith("/monailabel/") for p in paths):
            _log("the /monailabel/ endpoints are not there yet: skipped")
            return rows_of([], [], [], [], math.nan, seeded.scans, shape)
        prefix = "/monailabel/pants-scale"
        t = time.perf_counter()
        combined, masks, volume, affine = combined_head(shape, structures)
        empty = [name for name, mask in masks.items() if not mask.any()]
        if empty:
            raise BenchError(f"structures empty in the combined head: {empty}")
        _log(f"phantom and combined head ready in {time.perf_counter() - t:.1f} s")
        admin = _login(client, seeded.people["admin"][0][1])
        client.headers.update(admin)
        scan_id, head = _import_scan(client, seeded.project_id, volume, affine, masks)
        annotators = [_login(client, email) for _, email in seeded.people["annotator"]]
        ids = _scan_ids(url, seeded.project_id)
        sample_times, own_times = next_samples(client, prefix, annotators, ids, SAMPLE_REQUESTS, seeded.project_id)
        lead = _login(client, seeded.people["lead"][0][1])
        value = next(int(s["label_value"]) for s in structures if s["name"] == EDITED)
        save_times, sizes, first_save = save_labels(client, prefix, lead, combined, affine, structures, SAVES)
        final = _brush_replay(combined, value, SAVE_WARMUP + SAVES)
        version_id = _verify(client, scan_id, head, final, value)
        _log(f"last save: version {version_id}, only {EDITED} changed, voxel count right")
    return rows_of(sample_times, own_times, save_times, sizes, first_save, seeded.scans, shape)


def _brush_replay(combined: np.ndarray, value: int, saves: int) -> np.ndarray:
    """The map after `saves` brush strokes (the same random sequence save_labels used)."""
    rng = np.random.default_rng(SEED)
    current = combined
    for i in range(saves):
        current = _brush(current, value, rng, add=i % 2 == 0)
    return current


def rows_of(
    sample_times: list[float],
    own_times: list[float],
    save_times: list[float],
    sizes: list[int],
    first_save: float,
    scans: int,
    shape: tuple[int, int, int],
) -> list[Row]:
    """The result rows (NaN where nothing was measured)."""
    nxt, save = percentile(sample_times, 95), percentile(save_times, 50)
    own = percentile(own_times, 95)
    grid = "×".join(str(v) for v in shape)
    return [
        Row(
            "monailabel_next_sample_p95_ms",
            f"MONAI Label activelearning/priority p95 at {scans:,} scans ({len(sample_times)} calls)",
            nxt,
            "ms",
            f"≤ {NEXT_GOAL_MS:.0f} ms",
            None if math.isnan(nxt) else nxt <= NEXT_GOAL_MS,
        ),
        Row("monailabel_next_sample_p50_ms", "MONAI Label activelearning/priority p50", percentile(sample_times, 50),
            "ms"),
        Row("monailabel_next_task_p95_ms", "maskloop's own next-task p95, same run, interleaved", own, "ms"),
        Row("monailabel_next_sample_vs_next_task", "activelearning/priority p95 over maskloop's next-task p95",
            nxt / own if own else math.nan, "×"),
        Row(
            "monailabel_save_label_p50_ms",
            f"MONAI Label PUT datastore/label p50 ({grid} uint8 .nii.gz, 28 structures, {len(save_times)} saves)",
            save,
            "ms",
            f"≤ {SAVE_GOAL_MS:.0f} ms",
            None if math.isnan(save) else save <= SAVE_GOAL_MS,
        ),
        Row("monailabel_save_label_p95_ms", "MONAI Label PUT datastore/label p95", percentile(save_times, 95), "ms",
            NO_GOAL),
        Row("monailabel_save_label_first_ms",
            "MONAI Label first save after the image fetch (no kept map of its base: all 28 masks composed)",
            first_save, "ms", NO_GOAL),
        Row("monailabel_save_label_bytes", "MONAI Label save body (median multipart bytes)",
            percentile([float(s) for s in sizes], 50), "B"),
        Row("monailabel_load_avg", "MONAI Label bench: 1-min load average after measuring", os.getloadavg()[0], ""),
    ]  # fmt: skip


def main(argv: list[str]) -> int:
    """`python -m bench.monailabel [--quick | --scans N]`: run and print, without writing results.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SCANS:,} scans, a {QUICK_SHAPE} volume")
    parser.add_argument("--scans", type=int, default=None, help="number of scans to seed")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as results.json entries here")
    args = parser.parse_args(argv)
    rows = run(QUICK_SCANS if args.quick else args.scans, QUICK_SHAPE if args.quick else FULL_SHAPE)
    for row in rows:
        print(f"{row.key:36s} {row.value:12.1f} {row.unit:4s} {row.goal}")
    if args.json is not None:
        args.json.write_text(json.dumps({r.key: r.to_json() for r in rows}, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
