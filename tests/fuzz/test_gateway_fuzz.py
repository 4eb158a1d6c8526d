"""The JSON gateway's body parsing, in process: every route's request message as JSON, as
mangled JSON, as noise and as deep nesting. A body is either a request message or BadRequest
(which the gateway answers with etcd's error object); nothing else may escape. Bytes fields
must be what the body says: a message survives the trip through JSON unchanged."""

from __future__ import annotations

import contextlib
import json
import re

from google.protobuf import json_format
from hypothesis import strategies as st
from raftkv.api.http.gateway import (
    ROUTES,
    BadRequest,
    go_base64_check,
    parse_request,
    parse_requests,
)

from tests.fuzz.support import fuzz, messages, mutated

STD_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
REQUEST_CLASSES = sorted({route.request_class for route in ROUTES}, key=lambda c: c.__name__)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[type, bytes]:
    cls = draw(st.sampled_from(REQUEST_CLASSES))
    valid = json.dumps(json_format.MessageToDict(draw(messages(cls)))).encode()
    body = draw(
        st.one_of(
            st.just(valid),
            mutated(valid),
            st.binary(max_size=64),
            st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
            st.integers(1, 5000).map(lambda depth: b'{"key":' * depth + b"1" + b"}" * depth),
        )
    )
    return cls, body


def test_any_body_parses_to_a_message_or_bad_request() -> None:
    def body(case: tuple[type, bytes]) -> None:
        cls, payload = case
        for parse in (parse_request, parse_requests):
            with contextlib.suppress(BadRequest):
                parse(payload, cls)

    fuzz(body, bodies(), examples=300)


def test_a_message_survives_the_json_round_trip_unchanged() -> None:
    def body(case: tuple[type, object]) -> None:
        cls, message = case
        text = json.dumps(json_format.MessageToDict(message)).encode()
        assert parse_request(text, cls) == message
        assert parse_requests(text + b"\n" + text, cls) == [message, message]

    cases = st.sampled_from(REQUEST_CLASSES).flatmap(
        lambda cls: st.tuples(st.just(cls), messages(cls))
    )
    fuzz(body, cases, examples=200)


def test_base64_is_accepted_exactly_when_it_is_padded_standard_base64() -> None:
    """Go's StdEncoding (non-strict, as encoding/json uses it): whole groups of the standard
    alphabet, the last one possibly padded, CR and LF ignored anywhere."""

    def body(text: str) -> None:
        expected = STD_BASE64.fullmatch(text.replace("\r", "").replace("\n", "")) is not None
        try:
            go_base64_check(text)
            accepted = True
        except BadRequest:
            accepted = False
        assert accepted == expected

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n-_ !"
    fuzz(body, st.text(alphabet=alphabet, max_size=20), examples=500)
