"""Tests of `adorch weights list|show|promote|rollback` on the real Redis."""

from __future__ import annotations

import argparse
import json
import uuid

import pytest
import redis

from ad_orchestrator.cli_weights import register
from ad_orchestrator.settings import load_settings
from ad_orchestrator.weights import WeightStore
from rl.networks import ContentQNet

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(redis_url, tmp_path):
    """Run an `adorch` command line; return (exit status, printed text, store)."""
    settings = load_settings(
        redis_url=redis_url,
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        weights_hmac_key="c" * 32,
        state_dir=tmp_path,
    )
    parser = argparse.ArgumentParser(prog="adorch")
    register(parser.add_subparsers(dest="command", required=True), lambda: settings)
    store = WeightStore(redis.Redis.from_url(redis_url), settings)

    def run(line: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        args = parser.parse_args(line.split())
        status = args.func(args)
        return status, capsys.readouterr().out

    return run, store


def publish(store: WeightStore, promoted: bool) -> int:
    """Publish a ContentQNet version with a gate decision and an OPE figure."""
    return store.publish(
        "content",
        ContentQNet(hidden=8).state_dict(),
        {
            "input_schema": ContentQNet.INPUT_SCHEMA,
            "ope": {"value": 0.0042, "low": 0.003, "high": 0.005},
            "promotion": {"promote": promoted, "forced": False},
        },
    )


def test_list_shows_versions_and_marks_the_serving_one(cli, capsys):
    """One row per version, the serving one starred, the gate's verdict shown."""
    run, store = cli
    first = publish(store, True)
    publish(store, False)
    store.set_serving("content", first)

    status, text = run("weights list", capsys)

    lines = text.splitlines()
    assert status == 0
    assert lines[0].split()[:2] == ["version", "created"]
    assert lines[2].startswith("*  1") and "passed" in lines[2]
    assert lines[3].startswith("   2") and "refused" in lines[3]
    assert "0.00420 [0.00300, 0.00500]" in lines[2]


def test_list_with_nothing_stored_says_how_to_train(cli, capsys):
    """An empty store points at `adorch train`."""
    run, _ = cli

    status, text = run("weights list --agent budget", capsys)

    assert status == 0
    assert "no weights stored for agent 'budget'; run `adorch train`" in text


def test_show_prints_verified_metadata(cli, capsys):
    """`show` prints the signed metadata as JSON, with the serving flag."""
    run, store = cli
    version = publish(store, True)

    status, text = run(f"weights show {version}", capsys)

    shown = json.loads(text)
    assert status == 0
    assert shown["version"] == version and shown["serving"] is False
    assert shown["input_schema"] == ContentQNet.INPUT_SCHEMA


def test_promote_then_rollback_moves_the_pointer(cli, capsys):
    """`promote N` serves N; `rollback` serves the previous one again."""
    run, store = cli
    first, second = publish(store, True), publish(store, True)
    store.set_serving("content", first)

    promoted = run(f"weights promote {second}", capsys)
    serving_after_promote = store.serving_version("content")
    rolled = run("weights rollback", capsys)

    assert promoted == (0, f"content: now serving version {second} (was {first})\n")
    assert serving_after_promote == second
    assert rolled == (0, f"content: rolled back to version {first} (was {second})\n")
    assert store.serving_version("content") == first


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("weights show 99", "version 99 are missing from Redis"),
        ("weights promote 99", "version 99 are missing from Redis"),
        ("weights rollback", "serves no version"),
        ("weights rollback --to 42", "version 42 are missing from Redis"),
    ],
)
def test_errors_are_printed_with_status_1(cli, capsys, line, message):
    """Store errors end the command with status 1 and a readable message."""
    run, _ = cli

    status, text = run(line, capsys)

    assert status == 1
    assert text.startswith("error: ") and message in text


def test_tampered_version_cannot_be_promoted(cli, capsys):
    """`promote` verifies the signature before moving the pointer."""
    run, store = cli
    version = publish(store, True)
    store.redis.append(store.blob_key("content", version), b"\x00")

    status, text = run(f"weights promote {version}", capsys)

    assert status == 1 and "fail their HMAC" in text
    assert store.serving_version("content") is None
