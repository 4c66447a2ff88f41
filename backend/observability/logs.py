"""Structured logs: one JSON object per line with the request id or job id, for log shippers (Loki, ELK...)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from backend.core.config import Settings
from backend.observability.context import current_ids

# LogRecord attributes that are not extra fields a caller passed with `extra=`.
# uvicorn's `color_message` repeats the message with terminal colour codes.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}
_HANDLER_NAME = "maskloop-json"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: time, level, logger, message, the context ids, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single-line JSON object."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(current_ids())
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def json_handler(stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name(_HANDLER_NAME)
    return handler


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """With log_format json, send every log record (uvicorn's and Celery's included) through one JSON handler on
    the root logger; uvicorn's own access lines are dropped, the middleware's carry the request id. With text,
    logging is left as the server (uvicorn, Celery) set it up."""
    if settings.log_format != "json":
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    root.addHandler(json_handler(stream))
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "celery"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
