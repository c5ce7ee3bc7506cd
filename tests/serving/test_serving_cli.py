"""`slimserve serve` options: flags, SLIMSERVE_* variables, and clear errors for bad values."""

from __future__ import annotations

import argparse

import pytest

from slimserve.cli import serve


def parse(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slimserve")
    serve.register(parser.add_subparsers(dest="command"), environ=environ)
    return parser.parse_args(["serve", *argv])


def test_environment_variables_set_every_option():
    args = parse([], {
        "SLIMSERVE_ARTIFACT": "builtin://digits-mlp", "SLIMSERVE_MODEL_NAME": "digits",
        "SLIMSERVE_ARTIFACT_DIGEST": "sha256:abc",
        "SLIMSERVE_HTTP_PORT": "8081", "SLIMSERVE_GRPC_PORT": "9001", "SLIMSERVE_METRICS_PORT": "9090",
        "SLIMSERVE_MAX_BATCH_SIZE": "16", "SLIMSERVE_MAX_LATENCY_MS": "2.5", "SLIMSERVE_BATCHING": "false",
        "SLIMSERVE_MAX_BODY_BYTES": "1048576", "SLIMSERVE_DRAIN_TIMEOUT_S": "7", "SLIMSERVE_SHUTDOWN_DELAY_S": "3",
    })
    assert (args.artifact, args.model_name, args.http_port, args.grpc_port, args.metrics_port) == (
        "builtin://digits-mlp", "digits", 8081, 9001, 9090)
    assert (args.max_batch_size, args.max_latency_ms, args.batching, args.max_body_bytes) == (16, 2.5, False, 1048576)
    assert (args.drain_timeout_s, args.shutdown_delay_s, args.artifact_digest) == (7.0, 3.0, "sha256:abc")


def test_flags_win_over_environment_and_defaults_apply():
    args = parse(["--http-port", "8082", "--no-batching"], {"SLIMSERVE_HTTP_PORT": "8081"})
    assert args.http_port == 8082 and args.batching is False
    defaults = parse([], {})
    assert (defaults.http_port, defaults.grpc_port, defaults.max_batch_size, defaults.batching) == (8080, 9000, 32, True)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SLIMSERVE_HTTP_PORT", "eighty"), ("SLIMSERVE_GRPC_PORT", "70000"), ("SLIMSERVE_BATCHING", "maybe"),
     ("SLIMSERVE_GRPC_HTTP2", "quic")],
)
def test_a_bad_environment_value_names_its_variable(variable, value):
    with pytest.raises(SystemExit, match=variable):
        parse([], {variable: value})


def test_help_documents_the_environment_variables(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"], {})
    text = capsys.readouterr().out
    for name in ("SLIMSERVE_ARTIFACT", "SLIMSERVE_HTTP_PORT", "SLIMSERVE_BATCHING", "SLIMSERVE_MAX_LATENCY_MS"):
        assert name in text


def test_the_grpc_ports_http2_comes_from_the_flag_or_the_environment():
    assert parse([], {}).grpc_http2 == "auto"
    assert parse([], {"SLIMSERVE_GRPC_HTTP2": "H2"}).grpc_http2 == "h2"
    assert parse(["--grpc-http2", "nghttp2"], {"SLIMSERVE_GRPC_HTTP2": "h2"}).grpc_http2 == "nghttp2"


def test_invalid_limits_are_refused_before_loading_anything(capsys):
    args = parse(["--artifact", "builtin://digits-mlp", "--max-batch-size", "0"], {})
    assert serve.run(args) == 2
    assert "max_batch_size" in capsys.readouterr().err


def test_read_timeouts_come_from_flags_or_environment_and_must_be_positive(capsys):
    from slimserve.serving.http_timeouts import DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S

    defaults = parse([], {})
    assert (defaults.header_timeout_s, defaults.body_timeout_s) == (DEFAULT_HEADER_TIMEOUT_S, DEFAULT_BODY_TIMEOUT_S)
    args = parse(["--body-timeout-s", "7"], {"SLIMSERVE_HEADER_TIMEOUT_S": "2.5", "SLIMSERVE_BODY_TIMEOUT_S": "9"})
    assert (args.header_timeout_s, args.body_timeout_s) == (2.5, 7.0)
    off = parse(["--artifact", "builtin://digits-mlp", "--body-timeout-s", "0"], {})
    assert serve.run(off) == 2
    assert "body_timeout_s" in capsys.readouterr().err
