"""raftkvctl's TLS flags follow etcdctl's: which flags and ETCDCTL_* variables turn TLS on, what
the client is configured with, and how boolean flags are spelled."""

from __future__ import annotations

import io
from collections.abc import Mapping

import pytest
from raftkv.cli.ctl import (
    EXIT_BAD_ARGS,
    CommandError,
    Context,
    build_parser,
    context_from_args,
    expand_boolean_flags,
)
from raftkv.client import TLSConfig


def context(*argv: str, environ: Mapping[str, str] | None = None) -> Context:
    args = build_parser().parse_args(expand_boolean_flags([*argv, "get", "k"]))
    return context_from_args(args, environ or {}, io.StringIO(), io.StringIO())


def test_plaintext_unless_a_tls_flag_is_given() -> None:
    assert context().tls is None
    assert context("--insecure-skip-tls-verify").tls is None  # as etcdctl: needs TLS first


def test_certificate_flags_configure_mutual_tls() -> None:
    assert context("--cacert=ca.crt", "--cert=c.crt", "--key=c.key").tls == TLSConfig(
        ca_file="ca.crt", cert_file="c.crt", key_file="c.key"
    )
    assert context("--cacert", "ca.crt").tls == TLSConfig(ca_file="ca.crt")


def test_certificate_variables_configure_mutual_tls() -> None:
    environ = {"ETCDCTL_CACERT": "ca.crt", "ETCDCTL_CERT": "c.crt", "ETCDCTL_KEY": "c.key"}
    assert context(environ=environ).tls == TLSConfig("ca.crt", "c.crt", "c.key")
    # a flag wins over its variable
    assert context("--cacert=other.crt", environ=environ).tls == TLSConfig(
        "other.crt", "c.crt", "c.key"
    )


def test_secure_transport_without_files_uses_the_system_roots() -> None:
    assert context("--insecure-transport=false").tls == TLSConfig()
    assert context("--insecure-transport=false", "--insecure-skip-tls-verify").tls == TLSConfig(
        insecure_skip_verify=True
    )
    environ = {"ETCDCTL_INSECURE_TRANSPORT": "false", "ETCDCTL_INSECURE_SKIP_TLS_VERIFY": "true"}
    assert context(environ=environ).tls == TLSConfig(insecure_skip_verify=True)


def test_a_boolean_flag_never_takes_the_next_argument() -> None:
    args = build_parser().parse_args(
        expand_boolean_flags(["--insecure-skip-tls-verify", "put", "a", "b"])
    )
    assert (args.insecure_skip_tls_verify, args.key, args.value) == ("true", "a", "b")


def test_the_key_flag_does_not_clash_with_a_commands_key() -> None:
    args = build_parser().parse_args(["--key=c.key", "put", "a", "b"])
    assert (args.tls_key, args.key) == ("c.key", "a")


def test_bad_tls_flags_are_usage_errors() -> None:
    with pytest.raises(CommandError) as caught:
        context("--cert=c.crt")
    assert caught.value.exit_code == EXIT_BAD_ARGS
    with pytest.raises(CommandError, match="not a boolean"):
        context("--insecure-transport=maybe")
