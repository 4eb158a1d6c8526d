"""Auth tokens: etcd's `simple` and `jwt` providers, chosen with `--auth-token`.

`Authenticate` checks the password on the member that receives it, then proposes the
authentication through Raft; applying it calls `assign` on every member.

- **simple** tokens are random: `<16 letters>.<Raft index of the authentication>`. Every member
  records the same token when it applies the entry, so a token works on every member; a member
  asked for a token whose index it has not applied yet waits for that index first (`index_of`).
  A token lives `ttl` seconds (`--auth-token-ttl`, 300 by default) after its last use. Tokens
  are memory only: after a restart clients authenticate again ("invalid auth token" tells them
  to). Deleting a user or changing its password drops its tokens; disabling auth drops all.
- **jwt** tokens are signed (RS*, PS*, ES* or HS*) with claims `username`, `revision` and
  `exp`, and checked with the public key alone, so they need no shared state. They carry the
  auth revision they were issued at: any later change of users, roles or permissions makes
  them "old" for key access, as in etcd.

The clock is injected, so expiry is tested without waiting.
"""

from __future__ import annotations

import random
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from raftkv.auth.errors import VerifyOnlyError
from raftkv.auth.identity import AuthInfo

DEFAULT_SIMPLE_TTL = 300.0
DEFAULT_JWT_TTL = 300.0
_PREFIX_LETTERS = string.ascii_letters
_PREFIX_LENGTH = 16
# How often expired simple tokens are swept from memory (they are refused on lookup anyway).
_SWEEP_SECONDS = 1.0

_SIGN_METHODS = {
    *(f"{family}{bits}" for family in ("RS", "PS", "ES", "HS") for bits in (256, 384, 512)),
}


class TokenConfigError(ValueError):
    """`--auth-token` is malformed or its keys cannot be used."""


class TokenProvider(Protocol):
    """What the auth store needs from a token kind. Called on the event loop thread only."""

    def gen_prefix(self) -> str:
        """Chosen on the member that receives Authenticate, before proposing it."""

    def assign(self, username: str, revision: int, prefix: str, index: int) -> str:
        """Issue a token while applying an authentication (Raft entry `index`)."""

    def index_of(self, token: str) -> int:
        """The Raft index a member must have applied before it can judge `token`."""

    def info(self, token: str, revision: int) -> AuthInfo | None:
        """The caller `token` stands for (None: invalid); `revision` is the current one."""

    def enable(self) -> None: ...

    def disable(self) -> None: ...

    def invalidate_user(self, username: str) -> None: ...


@dataclass
class _SimpleToken:
    username: str
    deadline: float


class SimpleTokens:
    """etcd's `simple` tokens; see the module docstring."""

    def __init__(
        self,
        ttl: float = DEFAULT_SIMPLE_TTL,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._rng = rng if rng is not None else secrets.SystemRandom()
        self._tokens: dict[str, _SimpleToken] = {}
        self._next_sweep = 0.0

    def gen_prefix(self) -> str:
        return "".join(self._rng.choice(_PREFIX_LETTERS) for _ in range(_PREFIX_LENGTH))

    def assign(self, username: str, revision: int, prefix: str, index: int) -> str:
        now = self._clock()
        self._sweep(now)
        token = f"{prefix}.{index}"
        self._tokens[token] = _SimpleToken(username, now + self.ttl)
        return token

    def index_of(self, token: str) -> int:
        parsed = _split_simple(token)
        return parsed[1] if parsed is not None else 0

    def info(self, token: str, revision: int) -> AuthInfo | None:
        if _split_simple(token) is None:
            return None
        entry = self._tokens.get(token)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.deadline:
            del self._tokens[token]
            return None
        entry.deadline = now + self.ttl  # each use extends the token's life
        return AuthInfo(entry.username, revision)

    def enable(self) -> None:
        """Nothing to start: expiry is checked on use and swept on issue."""

    def disable(self) -> None:
        self._tokens.clear()

    def invalidate_user(self, username: str) -> None:
        self._tokens = {t: e for t, e in self._tokens.items() if e.username != username}

    def __len__(self) -> int:
        return len(self._tokens)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_SECONDS
        self._tokens = {t: e for t, e in self._tokens.items() if e.deadline > now}


def _split_simple(token: str) -> tuple[str, int] | None:
    """`<prefix>.<index>`, or None when the token does not have that shape."""
    parts = token.split(".")
    if len(parts) != 2 or not parts[1].isascii() or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


class JWTTokens:
    """etcd's `jwt` tokens; see the module docstring."""

    def __init__(
        self,
        sign_method: str,
        *,
        private_key: Any = None,
        public_key: Any = None,
        ttl: float = DEFAULT_JWT_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sign_method = sign_method
        self.ttl = ttl
        self._private = private_key
        self._public = public_key
        self._clock = clock

    def gen_prefix(self) -> str:
        return ""

    def assign(self, username: str, revision: int, prefix: str, index: int) -> str:
        if self._private is None:
            raise VerifyOnlyError()
        # Claims in etcd's (alphabetical) order.
        claims = {"exp": int(self._clock() + self.ttl), "revision": revision, "username": username}
        return jwt.encode(claims, self._private, algorithm=self.sign_method)

    def index_of(self, token: str) -> int:
        return 0

    def info(self, token: str, revision: int) -> AuthInfo | None:
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[self.sign_method],
                options={"verify_exp": False},
            )
        except jwt.InvalidTokenError:
            return None
        username, issued_at, expires = (claims.get(k) for k in ("username", "revision", "exp"))
        if not isinstance(username, str) or not isinstance(issued_at, int | float):
            return None
        if isinstance(expires, int | float) and self._clock() > expires:
            return None
        return AuthInfo(username, int(issued_at))

    def enable(self) -> None:
        """Stateless."""

    def disable(self) -> None:
        """Stateless: tokens stay valid until they expire, as in etcd."""

    def invalidate_user(self, username: str) -> None:
        """Stateless: a deleted user's token fails the revision check instead."""


@dataclass(frozen=True)
class TokenSpec:
    """A parsed `--auth-token` value: `simple`, or `jwt,sign-method=...,priv-key=...,...`."""

    kind: str
    options: dict[str, str] = field(default_factory=dict)
    jwt_ttl: float = DEFAULT_JWT_TTL

    @classmethod
    def parse(cls, text: str, duration: Callable[[str], float]) -> TokenSpec:
        """`duration` reads Go durations ("5m") for the jwt `ttl`, raising ValueError."""
        kind, *pairs = text.split(",")
        options: dict[str, str] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or "=" in value:
                raise TokenConfigError(f"invalid token specific option: {pair!r}")
            if name in options:
                raise TokenConfigError(f"option {name} is given twice")
            options[name] = value
        if kind not in ("simple", "jwt"):
            raise TokenConfigError(f'unknown token type "{kind}" (use simple or jwt)')
        if kind != "jwt":
            return cls(kind, options)
        return cls(kind, options, _check_jwt_options(options, duration))

    def provider(self, simple_ttl: float = DEFAULT_SIMPLE_TTL) -> TokenProvider:
        """Build the provider, reading key files (raises TokenConfigError)."""
        if self.kind == "simple":
            return SimpleTokens(simple_ttl)
        method = self.options["sign-method"]
        private = public = None
        if method.startswith("HS"):
            private = public = _read(self.options.get("priv-key") or self.options["pub-key"])
        else:
            if self.options.get("priv-key"):
                private = _load_private(self.options["priv-key"], method)
                public = private.public_key()
            if self.options.get("pub-key"):
                loaded = _load_public(self.options["pub-key"], method)
                if public is not None and _public_der(loaded) != _public_der(public):
                    raise TokenConfigError("jwt priv-key and pub-key do not match")
                public = loaded
        return JWTTokens(method, private_key=private, public_key=public, ttl=self.jwt_ttl)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TokenConfigError(f"cannot read jwt key {path}: {error.strerror}") from None


def _load_private(path: str, method: str) -> Any:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as error:
        raise TokenConfigError(f"jwt priv-key {path} is not a PEM private key: {error}") from None
    wanted = ec.EllipticCurvePrivateKey if method.startswith("ES") else rsa.RSAPrivateKey
    if not isinstance(key, wanted):
        raise TokenConfigError(f"jwt priv-key {path} does not suit sign-method {method}")
    return key


def _load_public(path: str, method: str) -> Any:
    try:
        key = serialization.load_pem_public_key(_read(path))
    except (ValueError, TypeError) as error:
        raise TokenConfigError(f"jwt pub-key {path} is not a PEM public key: {error}") from None
    wanted = ec.EllipticCurvePublicKey if method.startswith("ES") else rsa.RSAPublicKey
    if not isinstance(key, wanted):
        raise TokenConfigError(f"jwt pub-key {path} does not suit sign-method {method}")
    return key


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _check_jwt_options(options: dict[str, str], duration: Callable[[str], float]) -> float:
    """Check the jwt options; returns the token lifetime in seconds."""
    unknown = set(options) - {"sign-method", "priv-key", "pub-key", "ttl"}
    if unknown:
        raise TokenConfigError(f"unknown jwt option(s): {', '.join(sorted(unknown))}")
    method = options.get("sign-method", "")
    if method not in _SIGN_METHODS:
        raise TokenConfigError(
            f'jwt needs sign-method, one of {", ".join(sorted(_SIGN_METHODS))} (given "{method}")'
        )
    if not options.get("priv-key") and not options.get("pub-key"):
        raise TokenConfigError("jwt needs priv-key (to issue tokens) or pub-key (to check them)")
    if "ttl" not in options:
        return DEFAULT_JWT_TTL
    try:
        seconds = duration(options["ttl"])
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise TokenConfigError(f'invalid jwt ttl "{options["ttl"]}" (a duration such as 5m)')
    return seconds
