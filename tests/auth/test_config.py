"""`--auth-token`, `--auth-token-ttl` and `--bcrypt-cost`: defaults, parsing, refusals at start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from raftkv.auth import JWTTokens, SimpleTokens
from raftkv.cli.flags import parse_server_args
from raftkv.node.config import ConfigError, ServerConfig


def test_defaults_are_etcds() -> None:
    config = parse_server_args([], {})
    assert (config.auth_token, config.auth_token_ttl, config.bcrypt_cost) == ("simple", 300, 10)
    provider = config.token_provider()
    assert isinstance(provider, SimpleTokens) and provider.ttl == 300


def test_flags_set_the_token_kind_and_lifetimes(tmp_path: Path) -> None:
    key = tmp_path / "hmac.key"
    key.write_bytes(b"a shared secret")
    config = parse_server_args(
        [f"--auth-token=jwt,priv-key={key},sign-method=HS256,ttl=90s", "--bcrypt-cost=12"], {}
    )
    provider = config.token_provider()
    assert isinstance(provider, JWTTokens) and provider.ttl == 90
    assert config.bcrypt_cost == 12
    short = parse_server_args(["--auth-token-ttl=5"], {}).token_provider()
    assert isinstance(short, SimpleTokens) and short.ttl == 5


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--auth-token=opaque"], 'invalid --auth-token "opaque": unknown token type'),
        (["--auth-token=jwt,sign-method=RS256"], "priv-key"),
        (["--auth-token=jwt,sign-method=RS256,priv-key=/no/such/key"], "cannot read"),
        (["--bcrypt-cost=3"], "invalid --bcrypt-cost 3 (must be between 4 and 31)"),
        (["--bcrypt-cost=32"], "invalid --bcrypt-cost 32"),
        (["--auth-token-ttl=-1"], "--auth-token-ttl must not be negative"),
    ],
)
def test_bad_values_stop_the_start(argv: list[str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        parse_server_args(argv, {})


def test_a_config_built_in_code_gets_the_same_checks() -> None:
    with pytest.raises(ConfigError, match="unknown token type"):
        ServerConfig(auth_token="bogus")
