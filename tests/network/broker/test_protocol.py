"""parse_frame: what the broker accepts from a client, and that nothing else gets through."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_tasks.network.broker.protocol import (
    MAX_CHANNEL_NAME,
    Action,
    ProtocolError,
    encode,
    error_info,
    parse_frame,
)


def test_a_publish_frame_of_the_sdk_parses():
    raw = json.dumps({"action": 15, "channel": "c", "msgSerial": 0,
                      "messages": [{"name": "e", "data": "x", "encoding": "json"}]})
    frame = parse_frame(raw)
    assert frame["action"] is Action.MESSAGE and frame["messages"][0]["name"] == "e"


@pytest.mark.parametrize("frame, words", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ({"action": 99}, "unsupported action"),
    ({"action": "15"}, "unsupported action"),
    ({"action": True}, "unsupported action"),
    ({"action": 4}, "unsupported action"),  # CONNECTED comes from the broker, not a client
    ({"action": 10}, "channel"),
    ({"action": 10, "channel": ""}, "channel"),
    ({"action": 10, "channel": "c", "flags": "1"}, "flags"),
    ({"action": 10, "channel": "c", "channelSerial": 3}, "channelSerial"),
    ({"action": 15, "channel": "c", "messages": [{}]}, "msgSerial"),
    ({"action": 15, "channel": "c", "msgSerial": -1, "messages": [{}]}, "msgSerial"),
    ({"action": 15, "channel": "c", "msgSerial": 1.0, "messages": [{}]}, "msgSerial"),
    ({"action": 15, "channel": "c", "msgSerial": 0, "messages": []}, "non-empty list"),
    ({"action": 15, "channel": "c", "msgSerial": 0, "messages": ["x"]}, "JSON object"),
    ({"action": 15, "channel": "c", "msgSerial": 0, "messages": [{"name": 3}]}, "name"),
    ({"action": 15, "channel": "c", "msgSerial": 0, "messages": [{"clientId": []}]}, "clientId"),
    ({"action": 15, "channel": "c", "msgSerial": 0, "messages": [{"extras": 1}]}, "extras"),
    ({"action": 15, "channel": "c", "msgSerial": 0, "messages": [{"id": "i" * 300}]}, "id"),
    ({"action": 14, "channel": "c", "msgSerial": 0, "presence": [{"action": 1}]}, "presence"),
    ({"action": 14, "channel": "c", "msgSerial": 0, "presence": [{"action": True}]}, "presence"),
    ({"action": 17}, "accessToken"),
    ({"action": 0, "id": 5}, "id"),
])
def test_malformed_frames_are_refused(frame, words):
    raw = frame if isinstance(frame, str) else json.dumps(frame)
    with pytest.raises(ProtocolError, match=words):
        parse_frame(raw)


def test_a_too_long_channel_name_is_left_to_the_router():
    # refusing the frame here would close the connection; the router refuses that operation
    frame = parse_frame(json.dumps({"action": 10, "channel": "x" * (MAX_CHANNEL_NAME + 1)}))
    assert frame["action"] is Action.ATTACH


def test_binary_frames_are_refused():
    with pytest.raises(ProtocolError, match="binary"):
        parse_frame(b"\x82\xa6action\x0f")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
frame_like = st.fixed_dictionaries(
    {"action": st.integers(-1, 25) | json_values},
    optional={"channel": json_values | st.text(), "msgSerial": json_values,
              "messages": st.lists(st.dictionaries(
                  st.sampled_from(["name", "data", "clientId", "id", "encoding", "extras"]),
                  json_values, max_size=4), max_size=3) | json_values,
              "presence": st.lists(st.dictionaries(
                  st.sampled_from(["action", "data", "clientId"]), json_values, max_size=3),
                  max_size=3) | json_values,
              "flags": json_values, "channelSerial": json_values, "id": json_values,
              "auth": json_values},
)


@settings(max_examples=300, deadline=None)
@given(frame_like)
def test_any_frame_parses_or_raises_protocol_error(frame):
    raw = json.dumps(frame)
    try:
        parsed = parse_frame(raw)
    except ProtocolError:
        return
    # What gets through has the shape the router relies on.
    action = parsed["action"]
    assert isinstance(action, Action)
    if action in (Action.MESSAGE, Action.PRESENCE, Action.ATTACH, Action.DETACH):
        assert isinstance(parsed["channel"], str) and parsed["channel"]
    if action in (Action.MESSAGE, Action.PRESENCE):
        assert type(parsed["msgSerial"]) is int and parsed["msgSerial"] >= 0
        items = parsed["messages" if action == Action.MESSAGE else "presence"]
        assert items and all(isinstance(i, dict) for i in items)


@given(st.text())
def test_any_text_parses_or_raises_protocol_error(text):
    try:
        parse_frame(text)
    except ProtocolError:
        pass


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_encode_round_trips(frame):
    assert json.loads(encode(frame)) == frame


def test_error_info_derives_the_status_from_the_code():
    assert error_info("x", 40101) == {"message": "x", "code": 40101, "statusCode": 401}
    assert error_info("x", 80008)["statusCode"] == 400
    assert error_info("x", 90001)["statusCode"] == 400
    assert error_info("x", 40009, 413)["statusCode"] == 413
