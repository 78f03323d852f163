"""Logging: one JSON object per line in production, plain text for people.

python-json-logger turns each record, with its ``extra={...}`` fields (event_id,
event, outcome...), into one JSON line, encoded by orjson; no secret is ever passed to
a logger.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from typing import Any

import orjson
from pythonjsonlogger.json import JsonEncoder, JsonFormatter
from pythonjsonlogger.orjson import orjson_default

# An incoming X-Request-Id is kept when it is a plain token (a UUID, a router's id):
# anything else could forge or garble log lines, so it gets a fresh id instead.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")


def request_id_from(header: str | None) -> str:
    """The caller's request id when it is a sane token, else a new short one."""
    if header and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return secrets.token_hex(6)


class JsonLineFormatter(JsonFormatter):
    """python-json-logger's JSON lines, with the time in UTC (ISO 8601) and cheap.

    Every webhook request logs one line, so the per-line costs count: the time text is
    built once per second, and orjson encodes the line (the standard encoder was a third
    of the line's cost). The standard encoder takes what orjson refuses: text with a
    lone surrogate, integers past 64 bits.
    """

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
        self._encode = JsonEncoder(ensure_ascii=True).encode
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second, text = self._second
        if int(record.created) != second:  # one tuple, swapped whole: safe across threads
            second = int(record.created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """The base class's fields in one pass (it looks every key up several times)."""
        log_data["time"] = record.asctime
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data.update(message_dict)
        skip = self._skip_fields
        for key, value in record.__dict__.items():
            if key not in skip and not key.startswith("_"):
                log_data[key] = value

    def jsonify_log_record(self, log_data: Any) -> str:
        try:
            return orjson.dumps(log_data, default=orjson_default,
                                option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # orjson.JSONEncodeError
            return self._encode(log_data)


def configure_logging(level: str, fmt: str) -> None:
    """Send the relay's logs to stderr in the configured format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("app")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
