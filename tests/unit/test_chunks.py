"""The chunked mask format: exact round trips, O(edit) patches, shared chunks, and client box decoding."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from backend.core.errors import InvalidInput
from backend.imaging import chunks


class MemoryBlobs:
    """A dict-backed blob store for the pure codec tests."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writes = 0

    def put(self, payload: bytes) -> str:
        digest = hashlib.sha256(payload).hexdigest()
        if digest not in self.data:
            self.writes += 1
        self.data[digest] = payload
        return digest

    def get(self, digest: str) -> bytes:
        return self.data[digest]


def random_mask(shape: tuple[int, int, int], seed: int, density: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    # A blob plus sparse noise so both full and nearly empty chunks occur, including edge chunks.
    mask[5 : shape[0] - 3, 10 : shape[1] // 2, 2 : shape[2] - 1] = True
    mask |= rng.random(shape) < density * 0.05
    return mask


@pytest.mark.parametrize("shape", [(70, 65, 9), (64, 64, 64), (130, 1, 3), (1, 1, 1)])
def test_manifest_round_trip_is_exact(shape: tuple[int, int, int]) -> None:
    blobs = MemoryBlobs()
    mask = random_mask(shape, seed=sum(shape))
    manifest = chunks.build_manifest(mask, blobs.put)
    assert manifest.voxel_count == int(mask.sum())
    assert np.array_equal(chunks.assemble_mask(manifest, blobs.get), mask)
    assert chunks.MaskManifest.from_bytes(manifest.to_bytes()) == manifest


def test_chunks_are_zstd_and_chunks_written_with_zlib_are_still_read() -> None:
    import zlib

    smooth = np.zeros((64, 64, 64), dtype=bool)
    smooth[10:50, 5:40, 3:60] = True
    speckled = np.random.default_rng(4).random((64, 64, 40)) < 0.5
    for block in (smooth, speckled):
        encoded = chunks.encode_chunk(block)
        assert encoded[:1] == b"\x02"
        assert np.array_equal(chunks.decode_chunk(encoded, block.shape), block)
        legacy = b"\x01" + zlib.compress(np.packbits(block.ravel()).tobytes(), 6)  # before zstd
        assert np.array_equal(chunks.decode_chunk(legacy, block.shape), block)
    assert len(chunks.encode_chunk(smooth)) < 200  # a box of anatomy is a few runs
    with pytest.raises(ValueError, match="unknown chunk encoding"):
        chunks.decode_chunk(b"\x07junk", smooth.shape)


def test_empty_mask_stores_no_chunks() -> None:
    blobs = MemoryBlobs()
    manifest = chunks.build_manifest(np.zeros((100, 100, 50), dtype=bool), blobs.put)
    assert manifest.entries == ()
    assert blobs.writes == 0
    assert not chunks.assemble_mask(manifest, blobs.get).any()


def test_apply_box_matches_numpy_and_touches_only_overlapping_chunks() -> None:
    blobs = MemoryBlobs()
    mask = random_mask((150, 140, 70), seed=3)
    manifest = chunks.build_manifest(mask, blobs.put)
    writes_before = blobs.writes
    box = np.zeros((20, 30, 5), dtype=bool)
    box[3:17, 4:25, 1:4] = True
    origin = (55, 60, 30)  # straddles chunk boundaries on x and y: 4 chunks
    updated = chunks.apply_box(manifest, origin, box, blobs.get, blobs.put)
    expected = mask.copy()
    expected[55:75, 60:90, 30:35] = box
    assert np.array_equal(chunks.assemble_mask(updated, blobs.get), expected)
    assert updated.voxel_count == int(expected.sum())
    assert blobs.writes - writes_before <= 4
    unchanged = {e.flat_index: e.digest for e in manifest.entries}
    touched = {e.flat_index for e in updated.entries if unchanged.get(e.flat_index) != e.digest}
    assert len(touched) <= 4


def test_apply_box_can_erase_a_whole_chunk() -> None:
    blobs = MemoryBlobs()
    mask = np.zeros((64, 64, 64), dtype=bool)
    mask[10:20, 10:20, 10:20] = True
    manifest = chunks.build_manifest(mask, blobs.put)
    erased = chunks.apply_box(manifest, (0, 0, 0), np.zeros((64, 64, 64), dtype=bool), blobs.get, blobs.put)
    assert erased.entries == ()


@pytest.mark.parametrize(
    ("origin", "size"),
    [((-1, 0, 0), (2, 2, 2)), ((0, 0, 0), (11, 2, 2)), ((9, 9, 9), (2, 1, 1)), ((0, 0, 0), (0, 1, 1))],
)
def test_box_outside_volume_is_refused(origin: tuple[int, int, int], size: tuple[int, int, int]) -> None:
    with pytest.raises(InvalidInput, match="outside the volume"):
        chunks.check_box((10, 10, 10), origin, size)


def test_intersection_count_equals_numpy() -> None:
    blobs = MemoryBlobs()
    a = random_mask((100, 90, 40), seed=1)
    b = a.copy()
    b[10:40, 10:40, 10:20] = ~b[10:40, 10:40, 10:20]
    ma, mb = chunks.build_manifest(a, blobs.put), chunks.build_manifest(b, blobs.put)
    assert chunks.intersection_count(ma, mb, blobs.get) == int((a & b).sum())


def test_read_region_equals_slice() -> None:
    blobs = MemoryBlobs()
    mask = random_mask((100, 90, 40), seed=5)
    manifest = chunks.build_manifest(mask, blobs.put)
    region = chunks.read_region(manifest, (50, 20, 5), (40, 60, 30), blobs.get)
    assert np.array_equal(region, mask[50:90, 20:80, 5:35])


@pytest.mark.parametrize("encoding", chunks.BOX_ENCODINGS)
def test_box_encodings_round_trip_in_nifti_order(encoding: str) -> None:
    rng = np.random.default_rng(0)
    box = rng.random((7, 5, 3)) > 0.5
    data = chunks.encode_box(box, encoding)
    assert np.array_equal(chunks.decode_box(data, (7, 5, 3), encoding), box)
    # x varies fastest in the byte stream, as in a NIfTI file and a NiiVue drawing bitmap.
    if encoding == "u8":
        assert data[1] == box[1, 0, 0]
        assert data[7] == box[0, 1, 0]


def test_box_decoding_rejects_bad_payloads() -> None:
    with pytest.raises(InvalidInput, match="needs 105"):
        chunks.decode_box(b"\x00" * 10, (7, 5, 3), "u8")
    with pytest.raises(InvalidInput, match="not valid gzip"):
        chunks.decode_box(b"not gzip at all", (7, 5, 3), "u8+gzip")
    with pytest.raises(InvalidInput, match="0 or 1"):
        chunks.decode_box(bytes([2] * 105), (7, 5, 3), "u8")
    with pytest.raises(InvalidInput, match="unknown patch encoding"):
        chunks.decode_box(b"", (1, 1, 1), "png")
    bomb = gzip.compress(b"\x01" * 50_000_000)
    with pytest.raises(InvalidInput, match="needs 105"):
        chunks.decode_box(bomb, (7, 5, 3), "u8+gzip")
    truncated = gzip.compress(b"\x01" * 105)[:-12]
    with pytest.raises(InvalidInput):
        chunks.decode_box(truncated, (7, 5, 3), "u8+gzip")
