"""Log lines for people (plain) or for log pipelines (JSON lines), chosen in the config.

Structured fields go through ``extra={"fields": {...}}``: the plain format appends them as
``key=value`` pairs a person can grep, the JSON format puts them at the top level of the object
so Loki or Elasticsearch can index them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

FORMAT_PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


def _plain_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(FORMAT_PLAIN)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_plain_value(v)}" for k, v in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(
    format: Literal["plain", "json"] = "plain", level: str = "INFO"
) -> logging.Handler:
    """Send the ``monitor`` loggers (and warnings) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else PlainFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("monitor").setLevel(level)
    logging.captureWarnings(True)
    return handler
