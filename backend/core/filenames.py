"""Cleaning file names that clients send, before they are stored or shown."""

from __future__ import annotations

import re
import unicodedata

MAX_FILE_NAME = 255
_SEPARATORS = re.compile(r"[/\\]")


def clean_file_name(name: str | None, *, default: str = "upload", max_length: int = MAX_FILE_NAME) -> str:
    """The base name of a client's file name, safe to store and show: no folders (either separator), no control
    or other invisible characters, no '..', no leading dots or spaces, at most max_length characters (the
    end is kept, so the suffix such as .nii.gz survives); `default` when nothing is left."""
    base = _SEPARATORS.split(name or "")[-1]
    # Category C* = control, format (bidi overrides), surrogates, private use, unassigned.
    base = "".join(ch for ch in base if not unicodedata.category(ch).startswith("C"))
    while ".." in base:
        base = base.replace("..", ".")
    base = base.strip().lstrip(". ")
    if len(base) > max_length:
        base = base[-max_length:].lstrip(". ")
    return base or default
