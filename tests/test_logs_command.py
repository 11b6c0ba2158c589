"""``bastion logs``: the three streams, rotated files, one order's trail, --follow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLI, REPO

SHORT = ("--from", "2021-01-04", "--to", "2021-03-31")


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    home = tmp_path / "examples"
    shutil.copytree(REPO / "strategies", home / "strategies")
    shutil.copytree(REPO / "signatures", home / "signatures")
    return home


def logs_json(cli: CLI, home: Path, *args: str) -> list[dict[str, Any]]:
    r = cli("logs", "--json", "--home", home, *args)
    assert r.exit_code == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_an_order_is_followed_from_submission_to_fill(cli: CLI, examples: Path) -> None:
    """With --log-trades a backtest writes every order's life to the trades stream under
    its client order id; 'bastion logs --order ID' shows exactly that order's records,
    submission first, in time order."""
    r = cli("backtest", "sma_cross", *SHORT, "--no-report", "--log-trades", "--home", examples)
    assert r.exit_code == 0, r.stderr
    trades = logs_json(cli, examples, "--stream", "trades")
    submitted = [t for t in trades if t["event"] == "order_submitted"]
    assert submitted and all(t["stream"] == "trades" for t in trades)
    order_id = submitted[0]["order_id"]
    trail = logs_json(cli, examples, "--order", order_id)
    assert [t["event"] for t in trail][:2] == ["order_submitted", "order_accepted"]
    assert "order_filled" in [t["event"] for t in trail]
    assert {t["order_id"] for t in trail} == {order_id}
    assert trail[0]["strategy"] == "sma_cross.py" and len(trail[0]["sha256"]) == 64
    plain = cli("logs", "--order", order_id, "--home", examples).stdout
    assert "order_submitted" in plain and f"order_id={order_id}" in plain


def test_without_log_trades_a_backtest_writes_no_order_trail(cli: CLI, examples: Path) -> None:
    """A backtest's orders are in the store; the trades stream holds them only when asked
    (--log-trades); the other streams are written as usual."""
    r = cli("backtest", "sma_cross", *SHORT, "--no-report", "--home", examples)
    assert r.exit_code == 0, r.stderr
    events = {t["event"] for t in logs_json(cli, examples)}
    assert "order_submitted" not in events and "strategy_loaded" in events
    streams = {t["stream"] for t in logs_json(cli, examples, "-n", "3")}
    assert streams <= {"system", "strategy", "trades"}


def test_streams_and_last_lines(cli: CLI, examples: Path) -> None:
    """--stream picks one stream; -n keeps the last N records."""
    cli("backtest", "sma_cross", *SHORT, "--no-report", "--log-trades", "--home", examples)
    system = logs_json(cli, examples, "--stream", "system")
    assert system and {t["stream"] for t in system} == {"system"}
    assert len(logs_json(cli, examples, "-n", "2")) == 2


def test_follow_prints_new_records_until_interrupted(examples: Path, tmp_path: Path) -> None:
    """--follow keeps printing records as they are written, and Ctrl-C ends it cleanly."""
    bastion = str(Path(sys.executable).with_name("bastion"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    logs = examples / ".bastion" / "development" / "logs"
    logs.mkdir(parents=True)
    follower = subprocess.Popen(
        [bastion, "logs", "--follow", "--stream", "system", "--home", str(examples)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        time.sleep(1.0)
        run = subprocess.run(
            [bastion, "verify", "--home", str(examples)], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        time.sleep(1.0)
    finally:
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=20)
    assert follower.returncode == 0, err
    assert "strategy_loaded" in out and "Traceback" not in err
