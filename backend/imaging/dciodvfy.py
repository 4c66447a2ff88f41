"""Running dicom3tools' `dciodvfy` (the DICOM IOD validator, Debian package `dicom3tools`) on a file.

The tests and the benchmark check every exported SEG and CT slice with it; `errors` returns its "Error -" lines.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BINARY = "dciodvfy"


def available() -> bool:
    """Whether the dciodvfy binary is on the PATH."""
    return shutil.which(BINARY) is not None


def report(path: Path, timeout_s: float = 120.0) -> list[str]:
    """Every line dciodvfy prints about a file (errors and warnings); FileNotFoundError without the binary."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise FileNotFoundError(f"{BINARY} is not installed (apt-get install -y dicom3tools)")
    done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=timeout_s, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a file (empty: the object passes)."""
    return [line for line in report(path) if line.startswith("Error")]
