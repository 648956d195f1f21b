"""The JSON-lines protocol shared by the add-on and the worker."""

from __future__ import annotations

import io
import json

import pytest

from engine import protocol


def test_messages_round_trip_one_per_line():
    stream = io.StringIO()
    protocol.send(stream, "progress", step=3, total=10, loss=0.5, eta_s=12.0)
    protocol.send(stream, "error", code="no_face", message="no face in a.jpg", hint="use another photo")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first = protocol.decode(lines[0])
    assert first == {"type": "progress", "step": 3, "total": 10, "loss": 0.5, "eta_s": 12.0}
    assert protocol.decode(lines[1].encode())["code"] == "no_face"


def test_hello_carries_the_version_and_a_mismatch_is_explained():
    line = protocol.encode(protocol.hello("0.1.0", 42))
    assert protocol.decode(line)["protocol"] == protocol.PROTOCOL_VERSION
    other = json.dumps({"type": "hello", "protocol": protocol.PROTOCOL_VERSION + 1, "engine_version": "9",
                        "pid": 1})
    with pytest.raises(protocol.ProtocolError, match="different versions"):
        protocol.decode(other)


@pytest.mark.parametrize("line, reason", [
    ("", "empty"),
    ("loading weights 50%", "not JSON"),
    ('{"step": 1}', "no 'type'"),
    ('{"type": "teleport"}', "unknown message type"),
    ('{"type": "progress", "step": 1}', "lacks total"),
])
def test_bad_lines_are_rejected_with_the_reason(line, reason):
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.decode(line)


def test_non_finite_numbers_become_null_so_the_line_stays_valid_json():
    line = protocol.encode(protocol.message("progress", step=1, total=2, loss=float("nan")))
    assert json.loads(line)["loss"] is None


def test_building_a_message_without_required_fields_fails():
    with pytest.raises(protocol.ProtocolError, match="lacks hint"):
        protocol.message("error", code="x", message="y")
