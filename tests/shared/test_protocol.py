"""The wire protocol: round trips, errors that name the field at fault, a decoder that raises nothing else."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import protocol as p


def test_hello_round_trip():
    raw = '{"type":"hello","protocol":1,"user_id":"alice","display_name":"Alice","token":"t","resume_token":"r"}'
    msg = p.decode(raw)
    assert msg == p.Hello(protocol=1, user_id="alice", display_name="Alice", token="t", resume_token="r")
    assert json.loads(msg.encode()) == json.loads(raw)


def test_relayed_routing_sets_from_and_drops_to():
    msg = p.decode('{"type":"webrtc_ice_candidate","to":"bob","call_id":"c1","candidate":"x",'
                   '"sdpMid":"0","sdpMLineIndex":0,"from":"mallory"}')
    out = json.loads(msg.routed("alice").encode())
    assert out == {"type": "webrtc_ice_candidate", "call_id": "c1", "from": "alice", "candidate": "x",
                   "sdpMid": "0", "sdpMLineIndex": 0}


def test_server_messages_decode_on_the_client_side():
    welcome = p.ConnectionEstablished(
        user_id="bob", resume_token="r",
        users=(p.UserInfo(user_id="alice", display_name="Alice", status="in_call"),),
        server=p.ServerInfo(version="1", ping_interval=10, resume_grace=30),
    )
    assert p.decode(welcome.encode()) == welcome


@pytest.mark.parametrize("raw,field,words", [
    ('{"type":"hello","protocol":1,"display_name":"A"}', "user_id", "is missing"),
    ('{"type":"hello","protocol":"1","user_id":"a","display_name":"A"}', "protocol", "must be an integer"),
    ('{"type":"hello","protocol":true,"user_id":"a","display_name":"A"}', "protocol", "not a boolean"),
    ('{"type":"hello","protocol":1,"user_id":"","display_name":"A"}', "user_id", "must not be empty"),
    ('{"type":"hello","protocol":1,"user_id":"a","display_name":"A","calls":[{"call_id":"c"}]}', "calls[0].peer",
     "is missing"),
    ('{"type":"call_incoming","to":"b","call_id":"c","media":["audio","audio"]}', "media", "each once"),
    ('{"type":"call_ended","to":"b","call_id":"c","reason":null}', "reason", "must be a string, not null"),
    ('{"type":"hello","protocol":1,"user_id":"alice\\n","display_name":"A"}', "user_id", "may hold only"),
    ('{"type":"webrtc_offer","to":"b","call_id":"c"}', "sdp", "is missing"),
])
def test_errors_name_the_field(raw, field, words):
    with pytest.raises(p.ProtocolError) as info:
        p.decode(raw)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value) and words in str(info.value)


def test_unknown_type_and_allowed_set():
    with pytest.raises(p.ProtocolError) as info:
        p.decode('{"type":"presence","user_id":"a","display_name":"A","status":"online"}', allowed=p.CLIENT_TYPES)
    assert info.value.code == p.UNKNOWN_TYPE


def test_deep_nesting_is_a_clean_error():
    with pytest.raises(p.ProtocolError):
        p.decode("[" * 100_000 + "]" * 100_000)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
typed = st.fixed_dictionaries({"type": st.sampled_from(sorted(p.REGISTRY))},
                              optional={k: json_values | st.from_regex(r"\A[A-Za-z0-9_-]{40,90}\Z")
                                        for k in ("to", "call_id", "user_id", "display_name", "protocol", "media",
                                                  "sdp", "channel", "text", "key", "proof", "signature", "url",
                                                  "server_id")})
# Frames that look like ours at a glance: a type, then anything.
framed = st.from_regex(r'\A\{"type":"(hello|webrtc_offer|redirect|presence)"[^\n]{0,120}\Z', fullmatch=True)


@given(st.one_of(json_values.map(json.dumps), typed.map(json.dumps), framed, st.text(max_size=200),
                 st.binary(max_size=50)))
def test_decoder_raises_only_protocol_errors(raw):
    try:
        msg = p.decode(raw)
    except p.ProtocolError as exc:
        assert str(exc)
    else:
        assert p.decode(msg.encode()) == msg  # whatever decodes, re-encodes to the same thing


def test_redirect_needs_a_websocket_url():
    assert p.decode('{"type":"redirect","url":"wss://h:1"}') == p.Redirect(url="wss://h:1")
    with pytest.raises(p.ProtocolError) as info:
        p.decode('{"type":"redirect","url":"http://h:1"}')
    assert info.value.field == "url" and "must start with ws:// or wss://" in str(info.value)


def test_presence_batches_are_what_presence_batch_encodes_and_keep_under_the_limit():
    users = [p.UserInfo(user_id=f"u{i}", display_name="😀" * (i % 70 + 1), status="online") for i in range(3000)]
    frames = p.presence_batches([u.encode() for u in users], 16 * 1024)
    assert len(frames) > 1
    got = []
    for frame in frames:
        assert len(frame.encode()) <= 16 * 1024  # bytes, not characters: these names are 4 bytes a character
        msg = p.decode(frame)
        assert isinstance(msg, p.PresenceBatch) and frame == msg.encode()
        got.extend(msg.users)
    assert got == users
    assert p.presence_batches([], 16 * 1024) == []
    big = users[5].encode()
    assert p.presence_batches([big], 10) == [p.PresenceBatch(users=(users[5],)).encode()]  # alone if too long
