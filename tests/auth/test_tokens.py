"""The token providers: simple tokens' shape and lifetime, JWT signing and checking, and
`--auth-token` parsing."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from raftkv.auth import AuthInfo, JWTTokens, SimpleTokens, TokenConfigError, TokenSpec
from raftkv.auth.errors import VerifyOnlyError
from raftkv.node.config import parse_duration_seconds

from tests.auth.conftest import FakeClock

# ---- simple ---------------------------------------------------------------------------------


def test_simple_token_is_sixteen_letters_dot_index_and_names_its_user(
    tokens: SimpleTokens,
) -> None:
    prefix = tokens.gen_prefix()
    assert len(prefix) == 16 and prefix.isalpha()
    token = tokens.assign("alice", 3, prefix, 42)
    assert token == f"{prefix}.42"
    assert tokens.index_of(token) == 42
    assert tokens.info(token, 7) == AuthInfo("alice", 7)  # always the current revision


def test_simple_token_prefixes_differ() -> None:
    tokens = SimpleTokens(rng=random.Random(1))
    assert len({tokens.gen_prefix() for _ in range(100)}) == 100


def test_simple_token_expires_after_ttl_without_use(tokens: SimpleTokens, clock: FakeClock) -> None:
    token = tokens.assign("alice", 1, "abc", 5)
    clock.advance(299)
    assert tokens.info(token, 1) is not None
    clock.advance(299)  # the use above restarted the 300 s
    assert tokens.info(token, 1) is not None
    clock.advance(300)
    assert tokens.info(token, 1) is None
    assert tokens.info(token, 1) is None  # and it stays gone


def test_expired_simple_tokens_are_swept_when_new_ones_are_issued(
    tokens: SimpleTokens, clock: FakeClock
) -> None:
    for i in range(10):
        tokens.assign("u", 1, "p", i)
    clock.advance(301)
    tokens.assign("u", 1, "p", 99)
    assert len(tokens) == 1


@pytest.mark.parametrize("bad", ["", "abc", "abc.", "abc.x", "a.b.1", "abc.-1", "abc.1"])
def test_unknown_or_malformed_simple_tokens_are_invalid(tokens: SimpleTokens, bad: str) -> None:
    tokens.assign("alice", 1, "abc", 2)
    assert tokens.info(bad, 1) is None


def test_simple_tokens_of_a_user_are_dropped_on_invalidate_and_all_on_disable(
    tokens: SimpleTokens,
) -> None:
    alice = tokens.assign("alice", 1, "a", 1)
    bob = tokens.assign("bob", 1, "b", 2)
    tokens.invalidate_user("alice")
    assert tokens.info(alice, 1) is None and tokens.info(bob, 1) is not None
    tokens.disable()
    assert tokens.info(bob, 1) is None


# ---- jwt --------------------------------------------------------------------------------------


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return decoded


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_jwt_carries_etcds_claims_and_verifies(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(1_700_000_000)
    tokens = JWTTokens(
        "RS256", private_key=rsa_key, public_key=rsa_key.public_key(), ttl=600, clock=clock
    )
    token = tokens.assign("alice", 7, "", 99)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "typ": "JWT"}
    assert _claims(token) == {"exp": 1_700_000_600, "revision": 7, "username": "alice"}
    # The revision is the one it was issued at, not the current one.
    assert tokens.info(token, 9) == AuthInfo("alice", 7)
    assert tokens.index_of(token) == 0


def test_jwt_expires(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(1_700_000_000)
    tokens = JWTTokens(
        "RS256", private_key=rsa_key, public_key=rsa_key.public_key(), ttl=60, clock=clock
    )
    token = tokens.assign("alice", 1, "", 1)
    clock.advance(60)
    assert tokens.info(token, 1) is not None
    clock.advance(1)
    assert tokens.info(token, 1) is None


def test_jwt_signed_by_another_key_or_method_or_tampered_is_invalid(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    ours = JWTTokens("RS256", private_key=rsa_key, public_key=rsa_key.public_key())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    theirs = JWTTokens("RS256", private_key=other_key, public_key=other_key.public_key())
    assert ours.info(theirs.assign("alice", 1, "", 1), 1) is None
    ps = JWTTokens("PS256", private_key=rsa_key, public_key=rsa_key.public_key())
    assert ours.info(ps.assign("alice", 1, "", 1), 1) is None
    header, _payload, signature = ours.assign("alice", 1, "", 1).split(".")
    forged = base64.urlsafe_b64encode(b'{"revision":1,"username":"root"}').rstrip(b"=").decode()
    assert ours.info(f"{header}.{forged}.{signature}", 1) is None
    assert ours.info("a.b.c", 1) is None


def test_jwt_with_ecdsa_and_a_verify_only_member() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = JWTTokens("ES256", private_key=key, public_key=key.public_key())
    checker = JWTTokens("ES256", public_key=key.public_key())
    token = signer.assign("bob", 2, "", 1)
    assert checker.info(token, 5) == AuthInfo("bob", 2)
    with pytest.raises(VerifyOnlyError):
        checker.assign("bob", 2, "", 1)


# ---- --auth-token -----------------------------------------------------------------------------


def _write_keys(tmp_path: Path, key: rsa.RSAPrivateKey) -> tuple[Path, Path]:
    private = tmp_path / "priv.pem"
    public = tmp_path / "pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def parse(text: str) -> TokenSpec:
    return TokenSpec.parse(text, parse_duration_seconds)


def test_simple_spec_builds_simple_tokens_with_the_given_ttl() -> None:
    provider = parse("simple").provider(simple_ttl=5)
    assert isinstance(provider, SimpleTokens) and provider.ttl == 5


def test_jwt_spec_reads_keys_and_ttl(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    private, public = _write_keys(tmp_path, rsa_key)
    spec = parse(f"jwt,pub-key={public},priv-key={private},sign-method=RS256,ttl=10m")
    provider = spec.provider()
    assert isinstance(provider, JWTTokens)
    assert provider.ttl == 600
    assert provider.info(provider.assign("a", 1, "", 1), 1) == AuthInfo("a", 1)
    assert parse(f"jwt,priv-key={private},sign-method=RS256").jwt_ttl == 300


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("bogus", "unknown token type"),
        ("jwt,priv-key=/k", "sign-method"),
        ("jwt,sign-method=RS257,priv-key=/k", "sign-method"),
        ("jwt,sign-method=RS256", "priv-key"),
        ("jwt,sign-method=RS256,priv-key=/k,ttl=soon", "ttl"),
        ("jwt,sign-method=RS256,priv-key=/k,ttl=0s", "ttl"),
        ("jwt,sign-method=RS256,priv-key", "option"),
        ("jwt,sign-method=RS256,priv-key=/a,priv-key=/b", "twice"),
        ("jwt,sign-method=RS256,priv-key=/a,colour=red", "unknown jwt option"),
    ],
)
def test_bad_specs_are_refused(text: str, complaint: str) -> None:
    with pytest.raises(TokenConfigError, match=complaint):
        parse(text)


def test_unreadable_or_mismatched_keys_are_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    private, public = _write_keys(tmp_path, rsa_key)
    with pytest.raises(TokenConfigError, match="cannot read"):
        parse(f"jwt,priv-key={tmp_path / 'missing'},sign-method=RS256").provider()
    with pytest.raises(TokenConfigError, match="not a PEM private key"):
        parse(f"jwt,priv-key={public},sign-method=RS256").provider()
    with pytest.raises(TokenConfigError, match="does not suit"):
        parse(f"jwt,priv-key={private},sign-method=ES256").provider()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "other").mkdir()
    _, other_public = _write_keys(tmp_path / "other", other)
    with pytest.raises(TokenConfigError, match="do not match"):
        parse(f"jwt,priv-key={private},pub-key={other_public},sign-method=RS256").provider()
