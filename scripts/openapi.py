"""Write the API's OpenAPI document (JSON) without starting a server; the frontend's types are generated from it.

Usage (from the repository root):

    .venv/bin/python scripts/openapi.py build/openapi.json   # write the document to a file
    .venv/bin/python scripts/openapi.py                      # print it

`make openapi` regenerates frontend/src/api/schema.d.ts from it; `make frontend-check` fails when the committed
file differs from a fresh generation (the backend's schemas moved on).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    """Dump `backend.main.app.openapi()` to the path given (stdout without one)."""
    from backend.main import app

    text = json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if len(argv) > 1:
        target = Path(argv[1])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
