"""The IBKR plugin against the fake TWS (tests/fake_tws.py): the real ib_async client, a
real protocol peer on 127.0.0.1, the kernel as a real subprocess for ``bastion run``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from bastion import ConfigError, Environment
from bastion._environment import Detected
from bastion._secrets import Secrets
from bastion._settings import environment_settings
from bastion.interfaces import OrderUpdate, PluginContext
from bastion.models import AccountSnapshot, Fill, Order, OrderIntent
from bastion.plugins import ibkr

from .conftest import REPO, WS
from .fake_tws import Bar as FakeBar
from .fake_tws import FakeTWS, never_fill
from .fake_tws import market_orders_fill as ibkr_fills_market_orders

ZERO = Decimal(0)
EMPTY = AccountSnapshot(ZERO, ZERO, {}, {}, ZERO, ZERO)


@pytest.fixture
def fake() -> Iterator[FakeTWS]:
    with FakeTWS() as gateway:
        gateway.add_stock("AAPL")
        gateway.set_price("AAPL", 100.0)
        yield gateway


def context(port: int, environment: str = "paper", **extra: Any) -> PluginContext:
    config = {"environments": {environment: {"gateway_port": port, **extra}}}
    settings = environment_settings(
        Detected(Environment(environment), "--env"), Path("/nonexistent"), config, Path("t.toml")
    )
    return PluginContext(
        environment,
        Path("/nonexistent"),
        settings=settings,
        secrets=Secrets(environment, Path("/nonexistent")),
        live=True,
    )


def order(cid: str, quantity: int = 10, **kw: Any) -> Order:
    return Order(
        cid, "s.py", "a" * 64, None, OrderIntent("AAPL", "buy", quantity, **kw), datetime.now(UTC)
    )


def news(broker: ibkr.IBKRBroker, count: int, timeout: float = 5.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(broker.poll())
        time.sleep(0.05)
    return got


# ------------------------------------------------------------------ accounts


@pytest.mark.parametrize(
    ("environment", "reported", "approved", "needle"),
    [
        ("paper", ["U1234567"], None, "refuses the live account"),
        ("development", ["F7654321"], None, "refuses the live account"),
        ("live", ["DU1234567"], "DU1234567", "refuses the paper account"),
        ("live", ["U1234567"], None, "needs an approval"),
        ("live", ["U1234567"], "U7654321", "was approved for U****321"),
        ("paper", ["DU1", "DU2"], None, "several accounts"),
    ],
)
def test_an_account_the_environment_may_not_trade_is_refused(
    environment: str, reported: list[str], approved: str | None, needle: str
) -> None:
    """Paper (and development) refuse a live account (U/F...), live refuses a paper one
    (DU/DF...) and any account but the approved one; account ids appear masked."""
    with pytest.raises(ConfigError) as caught:
        ibkr.check_account(environment, reported, None, approved)
    assert needle in str(caught.value)
    assert "1234567" not in str(caught.value) and "7654321" not in str(caught.value)


def test_the_right_accounts_are_accepted() -> None:
    """A paper account on paper, the approved live account on live."""
    assert ibkr.check_account("paper", ["DU1234567"], None, None) == "DU1234567"
    assert ibkr.check_account("live", ["U1234567"], None, "U1234567") == "U1234567"
    assert ibkr.check_account("paper", ["DU1", "DU2"], "DU2", None) == "DU2"


# ------------------------------------------------------------------ the broker


def test_a_client_id_in_use_takes_the_next_one_of_the_range(fake: FakeTWS) -> None:
    """Error 326: the gateway closes the socket and ib_async only fails at its timeout;
    the adapter then takes the next id of the environment's range (paper: 100-199)."""
    fake.reject_client_id(100)
    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        assert broker.session.client_id == 101
        assert broker.session.account == "DU1234567"
    finally:
        broker.close()


def test_orders_carry_the_client_order_id_and_fills_come_back_once(fake: FakeTWS) -> None:
    """A market order goes out with orderRef = the client order id; its fill comes back
    through poll() with the execution id and the commission; a duplicate execution report
    gives the same execution id (the engine books it once)."""
    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        fake.duplicate_next_execution()
        assert broker.submit(order("run-000001"), EMPTY) is None
        got = news(broker, 2, timeout=3)
        fills = [n for n in got if isinstance(n, Fill)]
        assert {f.exec_id for f in fills} and len({f.exec_id for f in fills}) == 1
        fill = fills[0]
        assert (fill.order_id, fill.quantity, fill.price) == ("run-000001", 10, Decimal(100))
        assert fill.commission > 0
        [sent] = fake.orders_by_ref("run-000001")
        assert sent.order_ref == "run-000001"
    finally:
        broker.close()


def test_a_201_rejection_is_the_orders_rejection_with_ibkrs_reason(fake: FakeTWS) -> None:
    """IBKR rejects an order with error 201 and a Cancelled status: the adapter reports
    it as rejected, with the code and IBKR's words."""
    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        fake.reject_next_order(201, "Order rejected - reason:not enough margin")
        assert broker.submit(order("run-000002"), EMPTY) is None
        [update] = news(broker, 1)
        assert isinstance(update, OrderUpdate) and update.status == "rejected"
        assert update.reason.startswith("IBKR 201: ") and "not enough margin" in update.reason
    finally:
        broker.close()


def test_a_cancel_is_bastions_and_is_not_reported_back(fake: FakeTWS) -> None:
    """Bastion's own cancel of a working limit order returns the order and no update
    follows (the engine has booked the cancel already)."""
    fake.set_fill_policy(never_fill)
    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        working = order("run-000003", limit_price=90, type="limit")
        assert broker.submit(working, EMPTY) is None
        assert broker.working_symbols() == {"AAPL"}
        assert broker.cancel("run-000003") is working
        assert news(broker, 1, timeout=1) == [] and broker.working_symbols() == set()
    finally:
        broker.close()


def test_a_dropped_connection_reconnects_and_the_fills_made_meanwhile_arrive(
    fake: FakeTWS,
) -> None:
    """The gateway drops every connection; the adapter reconnects with back-off, checks
    the account again, and a fill that happened while it was away is reported (once)."""
    fake.set_fill_policy(never_fill)
    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        assert broker.submit(order("run-000004", limit_price=101, type="limit"), EMPTY) is None
        assert fake.wait_for(lambda: bool(fake.orders_by_ref("run-000004")))
        fake.drop_connections()
        [held] = fake.orders_by_ref("run-000004")
        fake.fill(held.order_id, 10, 100.5)
        assert fake.wait_for(broker.session.connected.is_set, timeout=10)
        fills = [n for n in news(broker, 1, timeout=5) if isinstance(n, Fill)]
        assert [f.order_id for f in fills][:1] == ["run-000004"]
        assert len({f.exec_id for f in fills}) == 1
    finally:
        broker.close()


def test_ibkr_is_for_paper_and_live_runs_only() -> None:
    """A backtest naming --broker ibkr is told what to use instead."""
    backtest = PluginContext("development", Path("/nonexistent"))
    with pytest.raises(ConfigError, match="paper and live runs"):
        ibkr.broker_factory("", backtest)
    with pytest.raises(ConfigError, match="paper and live runs"):
        ibkr.source_factory("symbols=AAPL", backtest)


# ------------------------------------------------------------------ bastion run, end to end


# ------------------------------------------------------------------ the source


class Reader:
    """Drains an IBKR source's bars on a thread, as the engine would."""

    def __init__(self, source: ibkr.IBKRSource) -> None:
        self.bars: list[Any] = []
        self.source = source
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for item in self.source.bars():
            self.bars.append(item)

    def wait(self, count: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.bars) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.bars)


def test_live_bars_are_built_from_five_second_bars_and_a_reconnect_is_a_reported_gap(
    fake: FakeTWS,
) -> None:
    """bar=15s: three 5-second bars make one bar (open of the first, high and low over
    all, close of the last, volumes summed; timed at its close).  The connection drops
    and a 5-second bar is lost meanwhile: the adapter reconnects, subscribes again,
    reports the gap, and a 5-second bar sent twice reaches the strategy once."""
    ctx = context(fake.port)
    source = ibkr.source_factory("symbols=AAPL,bar=15s,warmup=", context=ctx)
    reader = Reader(source)
    try:
        assert fake.wait_for(lambda: fake.realtime_subscriptions("AAPL") == 1, timeout=10)
        base = (int(time.time()) // 15 + 1) * 15
        for i, (o, h, lo, c, v) in enumerate([(10, 12, 9, 11, 100), (11, 15, 10, 14, 50),
                                              (14, 14, 8, 9, 25)]):  # fmt: skip
            fake.push_bar("AAPL", base + 5 * i, o, h, lo, c, v)
        [first] = reader.wait(1)
        assert first.ts == datetime.fromtimestamp(base + 15, UTC)
        assert (first.open, first.high, first.low, first.close, first.volume) == (10, 15, 8, 9, 175)
        fake.drop_connections()
        fake.push_bar("AAPL", base + 15, 9, 9, 9, 9, 1)  # nobody subscribed: lost
        assert fake.wait_for(lambda: fake.realtime_subscriptions("AAPL") == 1, timeout=15)
        fake.push_bar("AAPL", base + 20, 20, 21, 19, 20, 10)
        fake.push_bar("AAPL", base + 20, 20, 21, 19, 20, 10)  # replayed: dropped
        fake.push_bar("AAPL", base + 25, 20, 22, 20, 21, 10)
        fake.push_bar("AAPL", base + 30, 21, 21, 21, 21, 10)
        fake.push_bar("AAPL", base + 35, 21, 21, 21, 21, 10)
        fake.push_bar("AAPL", base + 40, 21, 21, 21, 21, 10)
        bars = reader.wait(3)
        assert [b.ts for b in bars] == [
            datetime.fromtimestamp(base + 15 * k, UTC) for k in (1, 2, 3)
        ]
        assert (bars[1].open, bars[1].high, bars[1].volume) == (20, 22, 20)  # 2 of 3
        assert source.session.gaps == 1 and source.session.late == 1
    finally:
        ctx.stop.set()
        reader.thread.join(timeout=5)
        source.close()


def test_history_paced_by_ibkr_is_retried_with_back_off(fake: FakeTWS) -> None:
    """Error 162 (pacing) on a historical request: the source waits and asks again
    (serialised, doubling the wait) and the warm-up bars arrive."""
    now = datetime.now(UTC).replace(microsecond=0)
    fake.set_historical_bars(
        "AAPL",
        [FakeBar(now - timedelta(seconds=5 * (i + 1)), 99, 101, 98, 99.5, 900) for i in range(3)],
    )
    fake.pace_historical(2)
    ctx = context(fake.port)
    source = ibkr.source_factory("symbols=AAPL,bar=5s,warmup=60 S", context=ctx)
    reader = Reader(source)
    try:
        bars = reader.wait(3, timeout=20)
        assert len(bars) == 3 and [b.close for b in bars] == [99.5] * 3
        assert fake.requests.count("reqHistoricalData") == 3
    finally:
        ctx.stop.set()
        reader.thread.join(timeout=5)
        source.close()


def test_informational_codes_are_notices_not_errors(fake: FakeTWS) -> None:
    """2104/2106/2158 ("market data farm connection is OK") are logged as info; an
    order still goes through afterwards."""
    broker = ibkr.broker_factory("", context=context(fake.port))
    try:
        with structlog.testing.capture_logs() as logs:
            for code in (2104, 2106, 2158):
                fake.send_error(-1, code)
            assert broker.submit(order("run-000009"), EMPTY) is None
            assert [n for n in news(broker, 1) if isinstance(n, Fill)]
        notices = [r for r in logs if r["event"] == "ibkr_notice"]
        assert sorted(r["code"] for r in notices) == [2104, 2106, 2158]
        assert all(r["log_level"] == "info" for r in notices)
        assert not [r for r in logs if r["event"] == "ibkr_error"]
    finally:
        broker.close()


BUYER = """\
from bastion import strategy


@strategy.hook
def on_bar(ctx, bar):
    ctx.log.info("bar", ts=bar.ts.isoformat(), close=bar.close)
    if ctx.position(bar.symbol) == 0 and ctx.pending(bar.symbol) == 0:
        ctx.order(bar.symbol, 10)


@strategy.hook
def on_fill(ctx, fill):
    ctx.log.info("filled", quantity=fill.quantity, price=fill.price, exec_id=fill.exec_id)
"""


def _run(ws: WS, port: int, *args: str) -> subprocess.Popen[str]:
    ws.write("buyer.py", BUYER)
    ws.sign("buyer.py")
    (ws.home / "bastion.toml").write_text(f"[environments.paper]\ngateway_port = {port}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("bastion")),
            "run",
            "buyer",
            "--env",
            "paper",
            "--source",
            "ibkr:symbols=AAPL,bar=5s,warmup=600 S",
            "--home",
            str(ws.home),
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_FED: dict[int, int] = {}


def _feed(fake: FakeTWS, count: int) -> None:
    """Push ``count`` 5-second bars, continuing where the last feed to ``fake`` stopped
    (times run forwards, as IBKR's do)."""
    base = max(_FED.get(id(fake), 0), (int(time.time()) // 5 + 1) * 5)
    for i in range(count):
        fake.push_bar("AAPL", base + 5 * i, 100.0, 101.0, 99.0, 100.0 + i, 500)
        time.sleep(0.25)
    _FED[id(fake)] = base + 5 * count


def _db(ws: WS) -> sqlite3.Connection:
    return sqlite3.connect(ws.home / ".bastion" / "paper" / "bastion.db")


def test_a_paper_run_end_to_end(ws: WS, fake: FakeTWS) -> None:
    """'bastion run --env paper --broker ibkr': warm-up bars from IBKR's history reach the
    sandboxed strategy without orders; the first live bar's order is stored, sent with its
    client order id, filled once (even reported twice), booked, told to on_fill; SIGTERM
    stops the run cleanly; runs, the store and the audit log agree."""
    now = datetime.now(UTC).replace(microsecond=0)
    fake.set_historical_bars(
        "AAPL",
        [FakeBar(now - timedelta(seconds=5 * (i + 1)), 99, 101, 98, 99.5, 900) for i in range(4)],
    )
    fake.duplicate_next_execution()
    proc = _run(ws, fake.port)
    try:
        assert fake.wait_for(lambda: "reqRealTimeBars" in fake.requests, timeout=30), proc
        _feed(fake, 4)
        assert fake.wait_for(lambda: bool(fake.executions), timeout=10)
        _feed(fake, 2)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "paper: 1 strategies" in err and "account D*****567" in err
    conn = _db(ws)
    try:
        ((kind, status),) = conn.execute("SELECT kind, status FROM runs").fetchall()
        assert (kind, status) == ("paper", "completed")
        orders = conn.execute("SELECT client_order_id, status, filled FROM orders").fetchall()
        trades_log = (ws.home / ".bastion" / "paper" / "logs" / "trades.jsonl").read_text()
        assert len(orders) == 1 and orders[0][1:] == ("filled", "10"), trades_log
        assert [o.order_ref for o in fake.orders] == [orders[0][0]]
        assert conn.execute("SELECT count(*) FROM fills").fetchone() == (1,)
    finally:
        conn.close()
    logs = ws.home / ".bastion" / "paper" / "logs"
    said = [json.loads(x) for x in (logs / "strategy.jsonl").read_text().splitlines()]
    bars = [r for r in said if r["event"] == "bar"]
    assert len(bars) >= 8  # 4 warm-up bars, then live ones
    assert [r["event"] for r in said].count("filled") == 1
    trades = (logs / "trades.jsonl").read_text()
    assert "order_submitted" in trades and "order_filled" in trades
    assert "warm-up" in trades  # the warm-up bars' orders were ignored
    _audit_verifies(ws)


def test_signal_only_sends_nothing(ws: WS, fake: FakeTWS) -> None:
    """--signal-only: the intent is recorded in the audit log as a signal and the gateway
    receives no order."""
    proc = _run(ws, fake.port, "--signal-only")
    try:
        assert fake.wait_for(lambda: "reqRealTimeBars" in fake.requests, timeout=30)
        _feed(fake, 3)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "SIGNAL-ONLY" in err
    assert fake.orders == []
    conn = _db(ws)
    try:
        assert conn.execute("SELECT count(*) FROM audit WHERE event = 'signal'").fetchone()[0] >= 1
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    finally:
        conn.close()


def test_a_paper_run_refuses_a_live_account_before_any_order(ws: WS) -> None:
    """The gateway reports a live account: the paper run stops with one line, nothing
    stored, nothing sent."""
    with FakeTWS(account="U7654321") as gateway:
        gateway.add_stock("AAPL")
        proc = _run(ws, gateway.port)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "refuses the live account U****321" in err and "Traceback" not in err
        assert gateway.orders == []
    assert not (ws.home / ".bastion" / "paper" / "bastion.db").exists()


def test_live_needs_an_approval_and_refuses_the_example_key(ws: WS, cli: Any) -> None:
    """--env live without --approve-live is refused before connecting; so are
    strategies signed by the example key and --in-process (no gateway is listening:
    each refusal comes before any connection is tried)."""
    r = cli("run", "--env", "live", "--source", "ibkr:symbols=AAPL", "--home", ws.home)
    assert r.exit_code != 0 and "--approve-live ACCOUNT" in r.stderr
    r = cli("run", "--env", "paper", "--source", "ibkr:symbols=AAPL", "--approve-live", "U1",
            "--home", ws.home)  # fmt: skip
    assert r.exit_code != 0 and "--env live only" in r.stderr
    shutil.copytree(REPO / "strategies", ws.home / "strategies", dirs_exist_ok=True)
    shutil.copytree(REPO / "signatures", ws.home / "signatures", dirs_exist_ok=True)
    live = ("run", "--env", "live", "--source", "ibkr:symbols=AAPL", "--approve-live", "U1234567",
            "--home", ws.home)  # fmt: skip
    r = cli(*live, "sma_cross")
    assert r.exit_code != 0 and "example-key-refused" in r.stderr, r.stderr
    assert "IBKR" not in r.stderr and "Traceback" not in r.stderr
    r = cli(*live, "--in-process")
    assert r.exit_code != 0 and "the live environment refuses it: drop --in-process" in r.stderr


def _audit_verifies(ws: WS) -> None:
    verify = subprocess.run(
        [str(Path(sys.executable).with_name("bastion")), "audit", "verify", "--env", "paper",
         "--home", str(ws.home)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr


def _kill_9_with_an_order_working(ws: WS, fake: FakeTWS) -> None:
    """Start 'bastion run' with orders that never fill, feed bars until the strategy's
    order reaches the gateway, then SIGKILL the kernel."""
    fake.set_fill_policy(never_fill)
    proc = _run(ws, fake.port)
    try:
        assert fake.wait_for(lambda: "reqRealTimeBars" in fake.requests, timeout=30), proc
        for _ in range(8):
            _feed(fake, 1)
            if fake.orders:
                break
        assert fake.wait_for(lambda: bool(fake.orders), timeout=5)
        time.sleep(0.3)  # let the kernel store what the gateway answered
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _statuses(ws: WS) -> list[str]:
    conn = _db(ws)
    try:
        return [s for (s,) in conn.execute("SELECT status FROM runs ORDER BY started")]
    finally:
        conn.close()


def test_kill_9_then_restart_settles_every_order_once(ws: WS, fake: FakeTWS) -> None:
    """SIGKILL the kernel while its order works at IBKR; the order fills while it is
    down.  The restarted run reconciles before its first order: the fill is stored once
    (with IBKR's execution id), the killed run ends 'interrupted', the strategy starts
    holding its 10 shares (so it does not buy again), nothing is sent twice, and the
    audit chain verifies."""
    _kill_9_with_an_order_working(ws, fake)
    assert _statuses(ws) == ["running"]
    [placed] = fake.orders
    fake.fill(placed.order_id, 10, 100.25)

    again = _run(ws, fake.port)
    try:
        assert fake.wait_for(lambda: fake.requests.count("reqRealTimeBars") >= 2, timeout=30), again
        _feed(fake, 3)
        time.sleep(0.5)
    finally:
        again.send_signal(signal.SIGTERM)
        _out, err = again.communicate(timeout=30)
    assert again.returncode == 0, err
    assert "reconciled 1 unfinished run(s)" in err and "1 missed fill(s) recovered" in err, err
    assert "carried over from earlier runs: buyer.py (1 fills)" in err
    assert [o.order_ref for o in fake.orders] == [placed.order_ref]  # never sent again
    assert _statuses(ws) == ["interrupted", "completed"]
    conn = _db(ws)
    try:
        assert conn.execute("SELECT client_order_id, status, filled FROM orders").fetchall() == [
            (placed.order_ref, "filled", "10")
        ]
        assert conn.execute("SELECT quantity, price FROM fills").fetchall() == [("10", "100.25")]
    finally:
        conn.close()
    _audit_verifies(ws)


def test_kill_9_with_an_order_working_cancels_it_at_restart(ws: WS, fake: FakeTWS) -> None:
    """Killed with its order still working and unfilled: the restart cancels that order
    at IBKR (no run follows it any more) before trading; the strategy, holding nothing,
    orders afresh under a new client order id."""
    _kill_9_with_an_order_working(ws, fake)
    [first] = fake.orders
    fake.set_fill_policy(ibkr_fills_market_orders)

    again = _run(ws, fake.port)
    try:
        assert fake.wait_for(lambda: fake.requests.count("reqRealTimeBars") >= 2, timeout=30), again
        _feed(fake, 3)
        assert fake.wait_for(lambda: len(fake.orders) == 2, timeout=10)
        time.sleep(0.5)
    finally:
        again.send_signal(signal.SIGTERM)
        _out, err = again.communicate(timeout=30)
    assert again.returncode == 0, err
    assert f"order {first.order_ref}: cancelled (cancelled at restart" in err, err
    old, new = fake.orders
    assert old.status == "Cancelled" and new.order_ref != old.order_ref
    assert _statuses(ws) == ["interrupted", "completed"]


def test_halt_stops_new_runs_until_resume(ws: WS, cli: Any) -> None:
    """'bastion halt' writes the halt file with the reason (owner-only); 'bastion run'
    refuses to start while it is there, before connecting; 'bastion resume' lifts it."""
    r = cli("halt", "--env", "paper", "--reason", "news pending", "--home", ws.home)
    assert r.exit_code == 0 and "trading halted in paper: news pending" in r.stdout
    halt = ws.home / ".bastion" / "paper" / "HALT"
    assert json.loads(halt.read_text())["reason"] == "news pending"
    assert halt.stat().st_mode & 0o777 == 0o600
    r = cli("run", "--env", "paper", "--source", "ibkr:symbols=AAPL", "--home", ws.home)
    assert r.exit_code == 2 and "trading is halted in paper" in r.stderr
    r = cli("resume", "--env", "paper", "--home", ws.home)
    assert r.exit_code == 0 and "trading resumed in paper" in r.stdout and not halt.exists()
    r = cli("resume", "--env", "paper", "--home", ws.home)
    assert "trading is not halted in paper" in r.stdout
    r = cli("resume", "--env", "paper", "--accept-positions", "--home", ws.home)
    assert r.exit_code == 2 and "--accept-positions goes with --strategy NAME" in r.stderr
