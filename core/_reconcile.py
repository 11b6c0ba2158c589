"""Reconciliation at the start of a paper or live run: the store against the broker,
settled before the new run sends a single order.

1. Every earlier run of this kind that ended without settling its orders (killed:
   still ``running`` with its process gone; or ``stopped`` with orders left working)
   has each open order matched, by client order id (IBKR's ``orderRef``), with what
   the broker reports:

   * executions not yet stored are stored against the order (no fill is lost; an
     execution id is stored once, so none is booked twice);
   * an order still working is cancelled (no run is following it any more) and
     waited for; one that will not end stays open and blocks its strategy;
   * an order the broker never saw was stored and never sent (the kernel stopped in
     between): it is closed as cancelled and never sent again;
   * its final status is stored, then the run is finished (``interrupted`` if it was
     killed, ``completed`` if it had stopped with orders left working).

2. Each strategy's book, every fill of this environment's runs, is handed to the
   engine, which replays it into the strategy's ledger: the run starts holding what
   the strategy holds.

3. The account's position in every symbol Bastion has traded here is compared with
   the book.  A difference is reported and blocks every strategy that trades the
   symbol until an operator acts (``bastion resume --strategy NAME``, with
   ``--accept-positions`` to accept the difference as not Bastion's).  Positions in
   symbols Bastion never traded here are reported, not blocked on.

What the broker holds is read through its four calls as one snapshot
(:func:`snapshot`: executions are read before and after the rest, and everything is
read again when a fill landed in between), at the start and while waiting for a cancel.
Blocks and accepted differences live in ``reconcile.json`` in the environment's data
directory; every step is in the audit log.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import attrs

from ._errors import ConfigError
from ._fsutil import atomic_write
from ._logging import get_logger
from .interfaces import (
    Broker,
    BrokerOrder,
    BrokerState,
    ReconcilingBroker,
    ReconcilingStore,
    Store,
    StoredOrder,
)
from .models import Fill, OrderStatus

__all__ = ["BLOCKS_FILE", "Blocks", "Mismatch", "Reconciliation", "reconcile", "snapshot"]

BLOCKS_FILE = "reconcile.json"
ZERO = Decimal(0)
CANCEL_WAIT = 10.0  # seconds to wait for the broker to confirm a cancel
SNAPSHOT_TRIES = 5  # times to ask the broker again when an execution lands meanwhile


@attrs.frozen
class Mismatch:
    """The account holds ``broker`` of ``symbol`` where Bastion's book says ``bastion``
    (plus any difference an operator accepted)."""

    symbol: str
    bastion: Decimal
    broker: Decimal
    strategies: tuple[str, ...]

    def line(self) -> str:
        return (
            f"{self.symbol}: the broker holds {self.broker}, Bastion's book {self.bastion} "
            f"(strategies {', '.join(self.strategies)})"
        )


@attrs.frozen
class Reconciliation:
    """What a start-up reconciliation found and did."""

    settled_runs: tuple[str, ...] = ()
    orders: tuple[tuple[str, str, str | None], ...] = ()  # (client order id, status, reason)
    recovered: tuple[Fill, ...] = ()  # executions stored now, missed by a stopped kernel
    opening: Mapping[str, tuple[Fill, ...]] = attrs.Factory(dict)  # each strategy's book
    mismatches: tuple[Mismatch, ...] = ()
    foreign: Mapping[str, Decimal] = attrs.Factory(dict)  # positions Bastion never traded
    unknown_executions: int = 0  # executions of orders Bastion did not place (manual)
    unsettled: tuple[str, ...] = ()  # orders still working after a cancel
    blocked: Mapping[str, str] = attrs.Factory(dict)  # strategy -> why it may not trade

    def lines(self) -> list[str]:
        """What the operator is told, one line each (empty when there was nothing to do)."""
        out = []
        if self.settled_runs:
            out.append(
                f"reconciled {len(self.settled_runs)} unfinished run(s) "
                f"({', '.join(self.settled_runs)}): {len(self.orders)} open order(s) settled, "
                f"{len(self.recovered)} missed fill(s) recovered"
            )
            out.extend(
                f"  order {cid}: {status}" + (f" ({reason})" if reason else "")
                for cid, status, reason in self.orders
            )
        carried = {name: len(fills) for name, fills in self.opening.items() if fills}
        if carried:
            out.append(
                "carried over from earlier runs: "
                + ", ".join(f"{name} ({count} fills)" for name, count in sorted(carried.items()))
            )
        out.extend(f"POSITION MISMATCH {m.line()}" for m in self.mismatches)
        out.extend(f"STILL WORKING after a cancel: order {cid}" for cid in self.unsettled)
        if self.foreign:
            out.append(
                "positions Bastion never traded here (left alone): "
                + ", ".join(f"{s} {q}" for s, q in sorted(self.foreign.items()))
            )
        if self.unknown_executions:
            out.append(
                f"{self.unknown_executions} execution(s) of orders Bastion did not place "
                "(manual trades?)"
            )
        out.extend(
            f"BLOCKED {name}: {reason}; 'bastion resume --strategy {name}' once resolved"
            for name, reason in sorted(self.blocked.items())
        )
        return out


class Blocks:
    """Strategies stopped from trading by a reconciliation, and the position
    differences operators accepted (``reconcile.json`` in the data directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blocked: dict[str, dict[str, Any]] = {}
        self.accepted: dict[str, Decimal] = {}
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            blocked = data.get("blocked", {})
            accepted = data.get("accepted", {})
            if not isinstance(blocked, dict) or not isinstance(accepted, dict):
                raise ValueError("'blocked' and 'accepted' must be objects")
            self.blocked = {str(k): dict(v) for k, v in blocked.items()}
            self.accepted = {str(k): Decimal(str(v)) for k, v in accepted.items()}
        except (OSError, ValueError, TypeError, InvalidOperation) as exc:
            raise ConfigError(
                f"{path} cannot be read ({exc}); restore it, or delete it to lift every "
                "reconciliation block (the audit log keeps what happened)"
            ) from None

    def reasons(self) -> dict[str, str]:
        return {name: str(entry.get("reason", "blocked")) for name, entry in self.blocked.items()}

    def block(
        self, strategy: str, reason: str, symbols: Mapping[str, tuple[Decimal, Decimal]]
    ) -> None:
        self.blocked[strategy] = {
            "reason": reason,
            "at": datetime.now(UTC).isoformat(),
            "symbols": {s: {"bastion": str(b), "broker": str(k)} for s, (b, k) in symbols.items()},
        }

    def lift(self, strategy: str, accept_positions: bool) -> dict[str, Decimal]:
        """Unblock ``strategy``; with ``accept_positions`` the differences it was blocked
        for are accepted (broker minus book, by symbol).  Returns what was accepted."""
        entry = self.blocked.pop(strategy)
        accepted: dict[str, Decimal] = {}
        if accept_positions:
            for symbol, sides in dict(entry.get("symbols", {})).items():
                difference = Decimal(sides["broker"]) - Decimal(sides["bastion"])
                self.accepted[symbol] = self.accepted.get(symbol, ZERO) + difference
                accepted[symbol] = difference
        return accepted

    def save(self) -> None:
        data = {
            "blocked": self.blocked,
            "accepted": {s: str(q) for s, q in sorted(self.accepted.items()) if q},
        }
        atomic_write(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o600)


def _status(state: BrokerState | None, cid: str) -> BrokerOrder | None:
    return None if state is None else state.orders.get(cid)


def _execution_ids(executions: Sequence[Fill]) -> list[str]:
    return sorted(f.exec_id or "" for f in executions)


def snapshot(broker: ReconcilingBroker, tries: int = SNAPSHOT_TRIES) -> BrokerState:
    """What ``broker`` holds, consistent across its separate calls: executions first,
    then the open and completed orders and the positions, then the executions again.
    When those differ (an execution landed in between, so the orders or positions may
    already show it or not yet), everything is asked again, up to ``tries`` times;
    then it is a ConfigError."""
    for _ in range(tries):
        before = _execution_ids(broker.executions())
        open_orders = dict(broker.open_orders())
        completed = dict(broker.completed_orders())
        positions = dict(broker.positions())
        executions = list(broker.executions())
        if _execution_ids(executions) == before:
            # An order reported both open and done: the open report, the broker's
            # current word on it, wins.
            orders = {**completed, **open_orders}
            return BrokerState(orders=orders, executions=executions, positions=positions)
    raise ConfigError(
        f"the {broker.name} broker's executions changed each of the {tries} times Bastion "
        "read its orders and positions (fills still arriving); start the run again once "
        "they have stopped"
    )


def reconcile(
    store: Store,
    broker: Broker,
    kind: str,
    run_id: str,
    data_dir: Path,
    *,
    cancel_wait: float = CANCEL_WAIT,
) -> Reconciliation:
    """Settle the unfinished runs of ``kind`` with ``broker``, gather each strategy's
    book and compare positions (see the module docstring).  ``run_id`` is the run about
    to start (named in the audit log).  A store that cannot reconcile is a ConfigError."""
    if not isinstance(store, ReconcilingStore):
        raise ConfigError(
            f"the store at {store.location} cannot reconcile orders with a broker; "
            f"{kind} runs need one that can (--storage sqlite)"
        )
    log = get_logger("trades", run_id=run_id)
    reconciling = broker if isinstance(broker, ReconcilingBroker) else None
    state = snapshot(reconciling) if reconciling is not None else None
    live = state is not None
    known = store.execution_ids()
    blocks = Blocks(data_dir / BLOCKS_FILE)
    settled: list[str] = []
    orders: list[tuple[str, str, str | None]] = []
    recovered: list[Fill] = []
    stuck: dict[str, str] = {}  # client order id -> strategy
    open_refs: set[str] = set()

    def executions(cid: str) -> list[Fill]:
        found = [
            f
            for f in (state.executions if state is not None else ())
            if f.order_id == cid and f.exec_id is not None and f.exec_id not in known
        ]
        return sorted(found, key=lambda f: (f.ts, f.exec_id or ""))

    def settle(past: str, stored: StoredOrder) -> bool:
        nonlocal state
        order, cid = stored.order, stored.order.client_order_id
        filled = stored.filled

        def book_missed() -> None:
            nonlocal filled
            for fill in executions(cid):
                store.record_fill(past, fill, order)
                assert fill.exec_id is not None
                known.add(fill.exec_id)
                filled += fill.quantity
                recovered.append(fill)
                log.warning(
                    "fill_recovered",
                    order_id=cid,
                    exec_id=fill.exec_id,
                    symbol=fill.symbol,
                    quantity=str(fill.quantity),
                    price=str(fill.price),
                )

        book_missed()
        seen = _status(state, cid)
        if seen is not None and seen.status == "working" and filled < order.quantity:
            assert reconciling is not None
            reconciling.cancel_order(cid)
            deadline = time.monotonic() + cancel_wait
            while True:
                time.sleep(0.2)
                state = snapshot(reconciling)
                book_missed()
                seen = _status(state, cid)
                if seen is None or seen.status != "working" or filled >= order.quantity:
                    break
                if time.monotonic() > deadline:
                    stuck[cid] = order.strategy
                    if filled != stored.filled:
                        store.update_order(past, cid, OrderStatus.PARTIAL, None, filled)
                    log.error("order_still_working", order_id=cid)
                    return False
            if seen is not None and seen.status == "cancelled" and filled < order.quantity:
                seen = attrs.evolve(seen, reason="cancelled at restart: no run was following it")
        if filled >= order.quantity:
            status, reason = OrderStatus.FILLED, None
        elif seen is None:
            status = OrderStatus.CANCELLED
            if not live:
                reason = f"the {broker.name} broker keeps no orders across runs"
            elif filled:
                reason = "partly filled; the broker no longer reports the order"
            else:
                reason = (
                    "never reached the broker (the kernel stopped between storing and "
                    "sending it); not sent again"
                )
        elif seen.status == "filled":
            # Reported filled, but some of its executions are gone (IBKR reports the
            # current day's): the position check shows the difference.
            status = OrderStatus.FILLED
            reason = (
                f"the broker reports it filled; executions for {order.quantity - filled} "
                "are no longer available to store"
            )
        elif seen.status == "rejected":
            status, reason = OrderStatus.REJECTED, seen.reason or "rejected by the broker"
        else:
            status, reason = OrderStatus.CANCELLED, seen.reason or "cancelled at the broker"
        store.update_order(past, cid, status, reason, filled)
        orders.append((cid, status.value, reason))
        return True

    for past, how in store.unsettled_runs(kind):
        if past == run_id:
            continue
        done = True
        for stored in store.open_orders(past):
            open_refs.add(stored.order.client_order_id)
            done = settle(past, stored) and done
        if done:
            killed = how != "stopped"
            store.finish_run(
                past,
                "interrupted" if killed else "completed",
                f"ended without settling its orders; reconciled by run {run_id}"
                if killed
                else None,
            )
            settled.append(past)

    book = store.book(kind)
    opening: dict[str, list[Fill]] = defaultdict(list)
    ours: dict[str, Decimal] = defaultdict(Decimal)
    traders: dict[str, set[str]] = defaultdict(set)
    for strategy, fill in book:
        opening[strategy].append(fill)
        ours[fill.symbol] += fill.signed_quantity
        traders[fill.symbol].add(strategy)
    for cid, strategy in stuck.items():
        blocks.block(strategy, f"order {cid} is still working at the broker after a cancel", {})

    mismatches: list[Mismatch] = []
    foreign: dict[str, Decimal] = {}
    unknown = 0
    differing: dict[str, dict[str, tuple[Decimal, Decimal]]] = defaultdict(dict)
    if state is not None:
        for symbol in sorted(set(ours) | set(state.positions)):
            theirs = state.positions.get(symbol, ZERO)
            if symbol not in traders:
                if theirs:
                    foreign[symbol] = theirs
                continue
            expected = ours[symbol] + blocks.accepted.get(symbol, ZERO)
            if theirs != expected:
                mismatch = Mismatch(symbol, expected, theirs, tuple(sorted(traders[symbol])))
                mismatches.append(mismatch)
                for strategy in mismatch.strategies:
                    differing[strategy][symbol] = (expected, theirs)
        for strategy, symbols in differing.items():
            blocks.block(
                strategy,
                "positions differ from the broker's: "
                + ", ".join(
                    f"{s} broker {k} vs Bastion {b}" for s, (b, k) in sorted(symbols.items())
                ),
                symbols,
            )
        unknown = sum(
            1
            for f in state.executions
            if f.exec_id is not None and f.exec_id not in known and f.order_id not in open_refs
        )
    if mismatches or stuck:
        blocks.save()
    result = Reconciliation(
        settled_runs=tuple(settled),
        orders=tuple(orders),
        recovered=tuple(recovered),
        opening={name: tuple(fills) for name, fills in opening.items()},
        mismatches=tuple(mismatches),
        foreign=foreign,
        unknown_executions=unknown,
        unsettled=tuple(stuck),
        blocked=blocks.reasons(),
    )
    if settled or recovered or mismatches or stuck or result.blocked:
        store.audit(
            "reconciled",
            {
                "run_id": run_id,
                "kind": kind,
                "settled_runs": list(settled),
                "orders": [list(o) for o in orders],
                "recovered_exec_ids": [f.exec_id for f in recovered],
                "mismatches": [
                    {
                        "symbol": m.symbol,
                        "bastion": str(m.bastion),
                        "broker": str(m.broker),
                        "strategies": list(m.strategies),
                    }
                    for m in mismatches
                ],
                "still_working": list(stuck),
                "blocked": dict(result.blocked),
            },
        )
    return result
