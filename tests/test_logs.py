"""The JSON log lines: one object per line, whatever the fields hold."""

from __future__ import annotations

import json
import logging

import pytest

from app.logs import JsonLineFormatter, request_id_from


def _line(**fields: object) -> str:
    record = logging.LogRecord("app.test", logging.INFO, __file__, 1, "webhook %s",
                               ("queued",), None)
    record.__dict__.update(fields)
    return JsonLineFormatter().format(record)


def test_a_line_is_one_json_object_with_the_records_fields() -> None:
    line = _line(event_id="ev-1", status=202, latency_ms=1.25, nested={"é": [1, None]})

    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "webhook queued"
    assert parsed["level"] == "INFO"
    assert parsed["logger"] == "app.test"
    assert parsed["time"].endswith("Z")
    assert (parsed["event_id"], parsed["status"], parsed["latency_ms"]) == ("ev-1", 202, 1.25)
    assert parsed["nested"] == {"é": [1, None]}


@pytest.mark.parametrize("value", ["bad \ud800 text", 2**70, -(2**64)])
def test_what_orjson_refuses_is_still_written_as_json(value: object) -> None:
    # A lone surrogate (JSON may escape one into an event's text) and integers past 64 bits.
    parsed = json.loads(_line(odd=value))

    assert parsed["odd"] == value
    assert parsed["message"] == "webhook queued"


def test_a_sane_request_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id_from("abc-123_DEF.4") == "abc-123_DEF.4"
    fresh = request_id_from('x" injected')
    assert fresh != 'x" injected' and len(fresh) == 12
    assert request_id_from(None) != request_id_from(None)
