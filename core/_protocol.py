"""What the kernel and a sandboxed worker say to each other, and the kernel's
validation of everything a worker says.

Frames from the kernel (``K_*``) are trusted by the worker.  Answers from a
worker (``W_*``) are not trusted at all: :func:`decode_reply` and
:func:`decode_loaded` accept only msgpack with exactly the documented keys
and types — text and integers only where the kernel expects numbers (no
floats, so no NaN or Infinity), every string and list capped — and raise
:class:`ProtocolViolation` otherwise.  Nothing a worker sends is ever
unpickled, evaluated or imported, and nothing in it says which strategy it
is: the kernel knows that already.

Bars travel in a fixed binary layout (:data:`BAR`), the hot path; everything
else as msgpack.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

import msgpack

from ._context import MAX_INTENTS_PER_EVENT, MAX_LOGS_PER_EVENT
from ._module import HOOK_ARGS, check_params
from .models import AccountSnapshot, Bar, Fill, OrderIntent, OrderType, Side

__all__ = [
    "BAR",
    "ProtocolViolation",
    "decode_loaded",
    "decode_reply",
    "encode_account",
    "encode_intent",
]

# Kernel -> worker frame kinds
K_SETUP, K_START, K_BAR, K_FILL, K_REJECT, K_STOP, K_EXIT, K_LOAD = 1, 2, 3, 4, 5, 6, 7, 8
# Worker -> kernel answer kinds
W_EMPTY, W_REPLY, W_LOADED, W_LOAD_FAILED = 0, 1, 2, 3

# flags u8, symbol index u32, time (microseconds since 1970-01-01 UTC) i64, OHLC + volume f64
BAR = struct.Struct("<BIq5d")
BAR_VOLUME, BAR_SYMBOL, BAR_UPDATES = 1, 2, 4
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


class BarClock:
    """A bar's time as exact integer microseconds since :data:`EPOCH` and back.

    Consecutive bars usually step by the same interval, so each side keeps the
    previous time and caches the step (``datetime`` arithmetic is exact; a
    float timestamp would not be for years far from 1970).
    """

    __slots__ = ("_steps", "_ts", "_us")

    def __init__(self) -> None:
        self._ts, self._us = EPOCH, 0
        self._steps: dict[Any, Any] = {}

    def to_us(self, ts: datetime) -> int:
        if ts.tzinfo is not UTC:  # same-zone subtraction would ignore a DST change
            ts = ts.astimezone(UTC)
        delta = ts - self._ts
        step = self._steps.get(delta)
        if step is None:
            if len(self._steps) > 256:
                self._steps.clear()
            step = self._steps[delta] = delta // ONE_US
        self._ts = ts
        us: int = self._us + step
        self._us = us
        return us

    def to_datetime(self, us: int) -> datetime:
        step = us - self._us
        delta = self._steps.get(step)
        if delta is None:
            if len(self._steps) > 256:
                self._steps.clear()
            delta = self._steps[step] = timedelta(microseconds=step)
        ts: datetime = self._ts + delta
        self._ts, self._us = ts, us
        return ts


MAX_TEXT = 1000
MAX_TRACEBACK = 5000
MAX_NUMBER_TEXT = 100  # a longer number is sent in scientific notation (and refused)
LOAD_STATUSES = frozenset({"syntax-error", "forbidden-import", "load-error", "bad-interface"})
FAILURE_KINDS = frozenset({"exception", "memory-limit"})
LEVELS = frozenset({"info", "warning", "error"})
MAX_LOG_RECORDS = MAX_LOGS_PER_EVENT + 1  # and one "log_truncated"
MAX_LAYERS = 32


class ProtocolViolation(Exception):
    """A worker said something the kernel does not accept; one line says what."""


# ------------------------------------------------------------------ shared encodings


def number_text(value: Decimal) -> str:
    """A Decimal as text the kernel parses; absurdly long ones in scientific notation."""
    text = str(value)
    if len(text) > MAX_NUMBER_TEXT:
        text = f"{value:.30E}"
    return text


def encode_intent(intent: OrderIntent) -> list[Any]:
    return [
        intent.symbol,
        intent.side.value,
        number_text(intent.quantity),
        intent.type.value,
        None if intent.limit_price is None else number_text(intent.limit_price),
        None if intent.stop_price is None else number_text(intent.stop_price),
        intent.tag,
    ]


def encode_account(account: AccountSnapshot) -> list[Any]:
    """What ``ctx`` needs of a portfolio snapshot: cash, positions and marks."""
    return [
        str(account.cash),
        {symbol: str(q) for symbol, q in account.positions.items()},
        {symbol: str(p) for symbol, p in account.prices.items()},
    ]


def decode_account(data: Sequence[Any]) -> AccountSnapshot:
    cash, positions, prices = data
    zero = Decimal(0)
    return AccountSnapshot(
        cash=Decimal(cash),
        equity=zero,  # ctx computes its own from cash, positions and marks
        positions={s: Decimal(q) for s, q in positions.items()},
        prices={s: Decimal(p) for s, p in prices.items()},
        long_value=zero,
        short_value=zero,
    )


def encode_fill(fill: Fill) -> list[Any]:
    ts = fill.ts.astimezone(UTC)
    return [
        fill.order_id,
        fill.symbol,
        fill.side.value,
        str(fill.quantity),
        str(fill.price),
        str(fill.commission),
        [ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond],
        fill.exec_id,
        fill.broker_order_id,
    ]


def decode_fill(data: Sequence[Any]) -> Fill:
    order_id, symbol, side, quantity, price, commission, ts, exec_id, broker_order_id = data
    return Fill(
        order_id=order_id,
        symbol=symbol,
        side=Side(side),
        quantity=Decimal(quantity),
        price=Decimal(price),
        commission=Decimal(commission),
        ts=decode_bar_time(ts),
        exec_id=exec_id,
        broker_order_id=broker_order_id,
    )


def decode_intent_trusted(data: Sequence[Any]) -> OrderIntent:
    """An intent the kernel sent back (a rejection): trusted, re-validated anyway."""
    symbol, side, quantity, kind, limit, stop, tag = data
    return OrderIntent(
        symbol=symbol,
        side=Side(side),
        quantity=Decimal(quantity),
        type=OrderType(kind),
        limit_price=None if limit is None else Decimal(limit),
        stop_price=None if stop is None else Decimal(stop),
        tag=tag,
    )


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ the kernel's checks


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=0,
            max_ext_len=0,
            max_str_len=len(data),
            max_array_len=1000,
            max_map_len=1000,
        )
    except Exception as exc:  # msgpack raises several kinds, all of them a violation
        raise ProtocolViolation(f"undecodable answer ({type(exc).__name__})") from None


def _show(value: Any) -> str:
    """A value a worker sent, safe to put in a message: never the repr of a container
    (which could be nested a thousand deep), at most 40 characters."""
    if value is None or type(value) in (str, int, bool):
        return repr(value)[:40]
    return f"a {type(value).__name__}"


def _one_of(value: Any, allowed: Any, what: str, expected: str) -> str:
    """``value`` if it is text and among ``allowed``; a violation otherwise."""
    if type(value) is not str or value not in allowed:
        raise ProtocolViolation(f"{what} {_show(value)} is not {expected}")
    return value


def _text(value: Any, what: str, limit: int = MAX_TEXT) -> str:
    if type(value) is not str:
        raise ProtocolViolation(f"{what} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise ProtocolViolation(f"{what} longer than {limit} characters")
    return value


def _fields(value: Any, what: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if type(value) is not dict:
        raise ProtocolViolation(f"{what} must be a map")
    if any(type(key) is not str for key in value):
        raise ProtocolViolation(f"{what} has a field name that is not text")
    keys = set(value)
    unknown = keys - required - optional
    if unknown:
        raise ProtocolViolation(f"{what} has unknown field {sorted(unknown)[0][:40]!r}")
    missing = required - keys
    if missing:
        raise ProtocolViolation(f"{what} lacks field {sorted(missing)[0]!r}")
    return value


def _seq(fields: Mapping[str, Any], expected: int) -> None:
    seq = fields["seq"]
    if type(seq) is not int or seq != expected:
        raise ProtocolViolation(f"answer out of sequence (expected {expected}, got {_show(seq)})")


def _decimal(value: Any, what: str) -> Decimal:
    text = _text(value, what, MAX_NUMBER_TEXT)
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ProtocolViolation(f"{what} {text!r} is not a number") from None
    if not number.is_finite():
        raise ProtocolViolation(f"{what} {text!r} is not a finite number")
    return number


def _intent(value: Any) -> OrderIntent:
    if type(value) is not list or len(value) != 7:
        raise ProtocolViolation("an intent must be a list of 7 fields")
    symbol, side, quantity, kind, limit, stop, tag = value
    symbol = _text(symbol, "intent symbol", 64)
    if not symbol.isprintable():
        raise ProtocolViolation("intent symbol has control characters")
    side = _one_of(side, ("buy", "sell"), "intent side", "buy or sell")
    kind = _one_of(kind, ("market", "limit", "stop"), "intent type", "market, limit or stop")
    try:
        return OrderIntent(
            symbol=symbol,
            side=Side(side),
            quantity=_decimal(quantity, "intent quantity"),
            type=OrderType(kind),
            limit_price=None if limit is None else _decimal(limit, "intent limit price"),
            stop_price=None if stop is None else _decimal(stop, "intent stop price"),
            tag=_text(tag, "intent tag", 64),
        )
    except ProtocolViolation:
        raise
    except (ValueError, TypeError) as exc:
        raise ProtocolViolation(f"invalid intent: {str(exc)[:200]}") from None


def _logs(value: Any) -> tuple[tuple[str, str, Mapping[str, str]], ...]:
    if type(value) is not list or len(value) > MAX_LOG_RECORDS:
        raise ProtocolViolation(f"logs must be a list of at most {MAX_LOG_RECORDS} records")
    records = []
    for record in value:
        if type(record) is not list or len(record) != 3:
            raise ProtocolViolation("a log record must be [level, event, fields]")
        level, event, fields = record
        level = _one_of(level, LEVELS, "log level", "info, warning or error")
        event = _text(event, "log event", 200)
        if type(fields) is not dict or len(fields) > 20:
            raise ProtocolViolation("log fields must be a map of at most 20 entries")
        clean = {
            _text(k, "log field name", 64): _text(v, "log field value", MAX_TEXT)
            for k, v in fields.items()
        }
        records.append((level, event, MappingProxyType(clean)))
    return tuple(records)


def decode_reply(
    data: bytes, expected: int
) -> tuple[tuple[OrderIntent, ...], tuple[tuple[str, str, Mapping[str, str]], ...], Any]:
    """A worker's answer to frame ``expected``: intents, log records and a failure
    (``(kind, hook, reason, traceback)`` or ``None``)."""
    fields = _fields(_unpack(data), "the answer", {"seq"}, {"i", "l", "f"})
    _seq(fields, expected)
    raw_intents = fields.get("i", [])
    if type(raw_intents) is not list or len(raw_intents) > MAX_INTENTS_PER_EVENT:
        raise ProtocolViolation(f"intents must be a list of at most {MAX_INTENTS_PER_EVENT}")
    intents = tuple(_intent(item) for item in raw_intents)
    logs = _logs(fields.get("l", []))
    failure = fields.get("f")
    if failure is not None:
        if type(failure) is not list or len(failure) != 4:
            raise ProtocolViolation("a failure must be [kind, hook, reason, traceback]")
        kind, hook, reason, traceback = failure
        kind = _one_of(kind, FAILURE_KINDS, "failure kind", "one a worker reports")
        hook = _one_of(hook, HOOK_ARGS, "failure hook", "a strategy hook")
        reason = _text(reason, "failure reason")
        if traceback is not None:
            traceback = _text(traceback, "traceback", MAX_TRACEBACK)
        failure = (kind, hook, reason, traceback)
    return intents, logs, failure


def _layers(value: Any) -> list[tuple[str, bool, str]]:
    if type(value) is not list or len(value) > MAX_LAYERS:
        raise ProtocolViolation("layers must be a list")
    layers = []
    for layer in value:
        if type(layer) is not list or len(layer) != 3 or type(layer[1]) is not bool:
            raise ProtocolViolation("a layer must be [name, active, detail]")
        layers.append((_text(layer[0], "layer name", 40), layer[1], _text(layer[2], "detail")))
    return layers


def decode_layers(data: bytes, expected: int) -> list[tuple[str, bool, str]]:
    """The worker's lock-down report (sent before any strategy byte ran)."""
    fields = _fields(_unpack(data), "the lock-down report", {"seq", "layers"}, set())
    _seq(fields, expected)
    return _layers(fields["layers"])


def decode_loaded(
    data: bytes, expected: int, failed: bool
) -> tuple[Any, Mapping[str, Any] | str, list[tuple[str, bool, str]], tuple[Any, ...]]:
    """The worker's load report: ``(hooks, params, layers, logs)``, or for a failed
    load ``(status, reason, layers, ())``."""
    if failed:
        fields = _fields(
            _unpack(data), "the load report", {"seq", "status", "reason", "layers"}, set()
        )
    else:
        fields = _fields(
            _unpack(data), "the load report", {"seq", "hooks", "params", "layers"}, {"logs"}
        )
    _seq(fields, expected)
    layers = _layers(fields["layers"])
    if failed:
        status = fields["status"]
        status = _one_of(status, LOAD_STATUSES, "load status", "one a worker reports")
        return status, _text(fields["reason"], "load failure reason"), layers, ()
    hooks = fields["hooks"]
    if type(hooks) is not list or not hooks or len(hooks) > len(HOOK_ARGS):
        raise ProtocolViolation("hooks must be a non-empty list of strategy hook names")
    hooks = [_one_of(hook, HOOK_ARGS, "hook", "one of the strategy hook names") for hook in hooks]
    params = fields["params"]
    if type(params) is not dict:
        raise ProtocolViolation("params must be a map")
    try:
        checked = check_params(params)
    except ValueError as exc:
        raise ProtocolViolation(f"params: {exc}") from None
    logs = _logs(fields.get("logs", []))
    return tuple(sorted(set(hooks))), checked, layers, logs


# ------------------------------------------------------------------ bars


def bar_time(ts: datetime) -> tuple[int, int, int, int, int, int, int]:
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond


def decode_bar_time(values: Sequence[int]) -> datetime:
    year, month, day, hour, minute, second, microsecond = values
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def bar_builder() -> Any:
    """``build(symbol, ts, open, high, low, close, volume) -> Bar`` for bars the kernel
    already validated: the slots are set directly (no validators), about twice as fast
    as ``Bar(...)``; the result is equal to the kernel's bar."""
    new = object.__new__
    slots = Bar.__dict__
    s0, s1, s2, s3, s4, s5, s6 = (
        slots[name].__set__ for name in ("symbol", "ts", "open", "high", "low", "close", "volume")
    )

    def build(
        symbol: str, ts: datetime, o: float, h: float, lo: float, c: float, v: float | None
    ) -> Bar:
        bar = new(Bar)
        s0(bar, symbol)
        s1(bar, ts)
        s2(bar, o)
        s3(bar, h)
        s4(bar, lo)
        s5(bar, c)
        s6(bar, v)
        return bar

    return build
