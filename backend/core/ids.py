"""Id types of the API: positive integers the database can hold, and no booleans, floats or strings in JSON.

`Id` is for request bodies: strict, so `"version_id": true` (a bool is an int in Python) or `"7"` is a 422
rather than id 1 or 7. `PathId` is for path and query parameters, which arrive as text and are parsed as
integers; both are bounded to PostgreSQL's `integer` so an out-of-range id is a 422, not a database error.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Interval
from pydantic import Strict

MAX_ID = 2**31 - 1

Id = Annotated[int, Strict(), Interval(ge=1, le=MAX_ID)]
PathId = Annotated[int, Interval(ge=1, le=MAX_ID)]
