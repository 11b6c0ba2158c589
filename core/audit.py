"""The audit log: the kernel computes and verifies it; storage plugins only keep rows.

Chain
    Every record is ``(id, ts, event, payload, prev_hash, hash)``; ``payload`` is
    the record's canonical JSON text (:func:`canonical_json`: sorted keys, no
    whitespace) and ``hash`` the SHA-256 of ``[id, ts, event, payload,
    prev_hash]`` as compact JSON (:func:`record_hash`), where ``prev_hash`` is the
    previous record's hash (:data:`GENESIS_HASH`, 64 zeros, for the first).  A
    store appends a record by calling :func:`seal` with the head of its log
    (highest id ever written and the last hash) while it holds its write lock, and
    inserting what it returns; it never hashes anything itself.

Runs
    ``run_started`` and ``run_finished`` records (payloads from
    :func:`run_started_payload` and :func:`run_finished_payload`) vouch for the
    stored runs: what a run started with (kind, environment, configuration, each
    strategy's SHA-256 and signer) and, when it finished, a digest of its orders,
    fills, equity, positions and results (:func:`run_digest` over
    :data:`DIGEST_TABLES`).

Verification
    :func:`verify` reads a store's :class:`AuditView` (one consistent snapshot)
    and checks the whole chain, then every run against its records.
    :class:`Checkpoints` anchors the chain outside the database: at each run's
    end the kernel appends the chain head to a file in the environment's data
    directory, signed with that installation's own Ed25519 key, so a database
    rewritten whole (chain included) no longer matches a signed head.

Public API (see docs/reference/api.md).
"""

from __future__ import annotations

import base64
import enum
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from ._errors import ConfigError
from .interfaces import AuditCheck, RunInfo, StrategyRecord

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_KEY",
    "DIGEST_FORM",
    "DIGEST_TABLES",
    "GENESIS_HASH",
    "OPEN_RUN_STATUSES",
    "AuditRecord",
    "AuditView",
    "Audited",
    "Checkpoint",
    "Checkpoints",
    "canonical_json",
    "format_ts",
    "record_hash",
    "run_digest",
    "run_finished_payload",
    "run_started_payload",
    "seal",
    "verify",
]

GENESIS_HASH: Final = "0" * 64
CHECKPOINT_FILE: Final = "audit-checkpoints.jsonl"
CHECKPOINT_KEY: Final = "audit-checkpoint.key"

# --------------------------------------------------------------------------- encoding


def format_ts(value: datetime) -> str:
    """An aware datetime as ISO-8601 UTC text with microseconds and ``Z`` (sorts as text):
    how every timestamp in the audit log and the stored rows is written."""
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError(f"timestamps must be timezone-aware, got {value!r}")
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def _json_default(value: object) -> object:
    """What ``json`` cannot encode itself: exact decimals as text, times as ISO text."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return format_ts(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def canonical_json(value: object) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 text kept as is; decimals as
    exact text, times as :func:`format_ts` text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


# --------------------------------------------------------------------------- the chain


@attrs.frozen
class AuditRecord:
    """One record of the audit log, exactly as stored."""

    id: int
    ts: str
    event: str
    payload: str  # canonical JSON text
    prev_hash: str
    hash: str


def record_hash(record_id: int, ts: str, event: str, payload: str, prev_hash: str) -> str:
    """The SHA-256 that chains one audit record (``payload`` is its stored JSON text)."""
    canonical = json.dumps(
        [record_id, ts, event, payload, prev_hash], separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def seal(
    highest_id: int,
    last_hash: str | None,
    event: str,
    payload: Mapping[str, Any],
    ts: datetime | None = None,
) -> AuditRecord:
    """The next record of a log whose highest id ever written is ``highest_id`` (0 when
    empty) and whose last record's hash is ``last_hash`` (``None`` when empty).

    The id comes after the highest ever written, so records cut from the end leave a
    gap :func:`verify` sees.  The store calls this holding its write lock and inserts
    the record as returned."""
    if not event:
        raise ValueError("an audit event needs a name")
    record_id = highest_id + 1
    prev_hash = last_hash if last_hash is not None else GENESIS_HASH
    stamp = format_ts(ts or datetime.now(UTC))
    text = canonical_json(dict(payload))
    return AuditRecord(
        record_id,
        stamp,
        event,
        text,
        prev_hash,
        record_hash(record_id, stamp, event, text, prev_hash),
    )


# --------------------------------------------------------------------------- run digests

#: The digest form new runs get.  Each ``run_finished`` record says which form its
#: digest uses, so runs stored under an older form still verify.
DIGEST_FORM: Final = 5

_ORDER_COLUMNS: Final = (
    "client_order_id, run_id, strategy, strategy_sha256, signer, symbol, side, quantity, type, "
    "limit_price, stop_price, tag, created, liquidation, status, reason, filled"
)
_FILL_COLUMNS_1: Final = (
    "id, run_id, client_order_id, strategy, strategy_sha256, signer, symbol, side, quantity, "
    "price, commission, ts"
)
_FILL_COLUMNS_4: Final = f"{_FILL_COLUMNS_1}, exec_id, broker_order_id"
_RESULTS_3: Final = (
    ("equity", "strategy, ts, equity", "strategy, ts, id"),
    ("positions", "strategy, symbol, quantity, avg_price, realized", "strategy, symbol"),
    ("run_strategies", "name, params, metrics, quarantined", "name"),
)
_RESULTS_5: Final = (
    _RESULTS_3[0],
    ("positions", "strategy, symbol, quantity, avg_price, realized, mark", "strategy, symbol"),
    _RESULTS_3[2],
    ("benchmark", "ts, equity", "ts, id"),
    ("period_returns", "strategy, period, value", "strategy, period"),
)


def _tables(form: int) -> tuple[tuple[str, str, str], ...]:
    fills = _FILL_COLUMNS_4 if form >= 4 else _FILL_COLUMNS_1
    results = _RESULTS_5 if form >= 5 else _RESULTS_3 if form >= 3 else ()
    return (("orders", _ORDER_COLUMNS, "client_order_id"), ("fills", fills, "id"), *results)


#: For each digest form, the ``(table, columns, order)`` a run's digest covers, in
#: order: a store returns those columns of the run's rows in that order
#: (:meth:`AuditView.rows`).  ``id`` in an order means insertion order.  Form 1 hashed
#: orders and fills row by row; 2 as one JSON array per table; 3 added equity,
#: positions and results; 4 the fills' execution and broker order ids; 5 the
#: positions' marks, the benchmark and the period returns.
DIGEST_TABLES: Final[Mapping[int, tuple[tuple[str, str, str], ...]]] = {
    form: _tables(form) for form in (1, 2, 3, 4, 5)
}


def _covers(form: int) -> str:
    return "orders, fills, equity, positions or results" if form >= 3 else "orders or fills"


def run_digest(rows: Callable[[str, str, str], Iterable[Sequence[object]]], form: int) -> str:
    """SHA-256 over one run's rows: for each ``(table, columns, order)`` of
    :data:`DIGEST_TABLES` ``[form]``, the table's name, then ``rows(table, columns,
    order)`` as one compact JSON array (form 1: one JSON line per row).

    The rows are streamed: the array is hashed piece by piece (``[``, each row's
    compact JSON joined by ``,``, ``]``: the same bytes ``json.dumps`` writes for the
    whole list), so a run of millions of rows is digested in constant memory."""
    digest = hashlib.sha256()
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for table, columns, order in DIGEST_TABLES[form]:
        digest.update(table.encode())
        if form == 1:
            for row in rows(table, columns, order):
                digest.update(dumps(list(row)).encode())
                digest.update(b"\n")
            continue
        digest.update(b"[")
        first = True
        for row in rows(table, columns, order):
            if not first:
                digest.update(b",")
            first = False
            digest.update(dumps(list(row)).encode())
        digest.update(b"]")
    return digest.hexdigest()


# --------------------------------------------------------------------------- run records

_STRATEGY_FIELDS: Final = ("sha256", "signer", "signer_name", "whitelist_version", "unsigned")
_STARTED_FIELDS: Final = ("kind", "environment", "started", "bastion_version")
_FINISHED_FIELDS: Final = ("status", "error", "finished")
#: Statuses of a run that has no ``run_finished`` record yet.
OPEN_RUN_STATUSES: Final = frozenset({"running", "stopped"})


def run_started_payload(
    run: RunInfo, strategies: Sequence[StrategyRecord], pid: int
) -> dict[str, Any]:
    """The ``run_started`` record of a run: what :func:`verify` later holds it to."""
    return {
        "run_id": run.run_id,
        "kind": run.kind,
        "environment": run.environment,
        "started": format_ts(run.started),
        "bastion_version": run.bastion_version,
        "pid": pid,
        "config": json.loads(canonical_json(dict(run.config))),
        "strategies": [
            {
                "name": s.name,
                "sha256": s.sha256,
                "signer": s.signer,
                "signer_name": s.signer_name,
                "whitelist_version": s.whitelist_version,
                "unsigned": s.unsigned,
            }
            for s in strategies
        ],
    }


def run_finished_payload(
    run_id: str,
    status: str,
    error: str | None,
    finished: str,
    counts: tuple[int, int],
    rows: Callable[[str, str, str], Iterable[Sequence[object]]],
) -> dict[str, Any]:
    """The ``run_finished`` record of a run: its final status and the digest of
    everything stored for it (``rows`` as for :func:`run_digest`)."""
    return {
        "run_id": run_id,
        "status": status,
        "error": error,
        "finished": finished,
        "orders": counts[0],
        "fills": counts[1],
        "trades_sha256": run_digest(rows, DIGEST_FORM),
        "trades_digest_form": DIGEST_FORM,
    }


# --------------------------------------------------------------------------- verification


@runtime_checkable
class AuditView(Protocol):
    """One consistent read-only snapshot of a store, for :func:`verify`."""

    def records(self) -> Iterator[AuditRecord]:
        """Every audit record, in id order."""
        ...

    def highest_id(self) -> int:
        """The highest record id ever written (also of records since removed)."""
        ...

    def last(self) -> AuditRecord | None:
        """The record with the highest id now in the log (the chain head), if any."""
        ...

    def runs(self) -> Mapping[str, Mapping[str, Any]]:
        """Every stored run by id: ``kind``, ``environment``, ``status``, ``started``,
        ``finished``, ``bastion_version``, ``config`` (JSON text) and ``error``."""
        ...

    def strategies(self) -> Mapping[str, Mapping[str, Mapping[str, Any]]]:
        """Each run's strategies by name: ``sha256``, ``signer``, ``signer_name``,
        ``whitelist_version``, ``unsigned``."""
        ...

    def rows(self, run_id: str, table: str, columns: str, order: str) -> Iterable[Sequence[object]]:
        """``SELECT columns FROM table WHERE run_id = ? ORDER BY order`` (``id``:
        insertion order), values as stored; may be streamed (iterated once)."""
        ...


@runtime_checkable
class Audited(Protocol):
    """A store :func:`verify` can check."""

    def audit_view(self) -> AbstractContextManager[AuditView]:
        """A snapshot of the store (one read transaction) for as long as it is open."""
        ...


def _same_json(stored: object, recorded: object) -> bool:
    try:
        return isinstance(stored, str) and canonical_json(json.loads(stored)) == canonical_json(
            recorded
        )
    except (ValueError, TypeError):
        return False


def _chain_problem(view: AuditView) -> tuple[int, int | None, str | None]:
    """``(records in the log, first broken id, reason)`` of the chain alone."""
    count = 0
    first: tuple[int | None, str] | None = None
    prev_id, prev_hash = 0, GENESIS_HASH
    for record in view.records():
        count += 1
        if first is not None:
            continue  # the first fault is reported; the rest are only counted
        if record.id != prev_id + 1:
            where = f"between {prev_id} and {record.id}" if prev_id else f"before {record.id}"
            first = record.id, f"records missing {where}"
        elif record.prev_hash != prev_hash:
            link = f"record {prev_id}" if prev_id else "the start of the log (64 zeros)"
            first = record.id, f"record {record.id}: prev_hash does not link to {link}"
        elif record.hash != record_hash(
            record.id, record.ts, record.event, record.payload, record.prev_hash
        ):
            first = record.id, f"record {record.id}: hash does not match its contents"
        prev_id, prev_hash = record.id, record.hash
    if first is not None:
        return count, first[0], first[1]
    highest = view.highest_id()
    if highest > prev_id:
        where = f"after {prev_id}" if prev_id else "from the start"
        return count, prev_id + 1, f"records missing {where} (the log reached record {highest})"
    return count, None, None


def _strategies_problem(
    run_id: str, recorded: Mapping[str, Any], stored: Mapping[str, Mapping[str, Any]]
) -> str | None:
    listed = recorded.get("strategies")
    if not isinstance(listed, list):
        return None
    names = set()
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        name = entry["name"]
        names.add(name)
        row = stored.get(name)
        if row is None:
            return f"strategy {name} of run {run_id} was removed after the run started"
        for field in _STRATEGY_FIELDS:
            value = bool(row[field]) if field == "unsigned" else row[field]
            if field in entry and value != entry[field]:
                return (
                    f"the {field} of strategy {name} in run {run_id} "
                    "was changed after the run started"
                )
    added = sorted(set(stored) - names)
    if added:
        return f"strategy {added[0]} was added to run {run_id} after the run started"
    return None


def _runs_problem(view: AuditView) -> tuple[int | None, str] | None:
    """The first ``run_started`` / ``run_finished`` record the stored runs no longer match."""
    runs = view.runs()
    strategies = view.strategies()
    records: list[tuple[int, str, str, dict[str, Any]]] = []
    last_finished: dict[str, int] = {}
    for record in view.records():
        if record.event not in ("run_started", "run_finished"):
            continue
        recorded = json.loads(record.payload)
        if not isinstance(recorded, dict) or not isinstance(recorded.get("run_id"), str):
            continue
        records.append((record.id, record.event, recorded["run_id"], recorded))
        if record.event == "run_finished":
            last_finished[recorded["run_id"]] = record.id

    for record_id, event, run_id, recorded in records:
        where = f"record {record_id}: "
        row = runs.get(run_id)
        if row is None:
            return record_id, f"{where}run {run_id} was deleted from the runs table"
        if event == "run_started":
            for field in _STARTED_FIELDS:
                if field in recorded and row[field] != recorded[field]:
                    return record_id, f"{where}run {run_id}'s {field} was changed after it started"
            if "config" in recorded and not _same_json(row["config"], recorded["config"]):
                return record_id, f"{where}run {run_id}'s config was changed after it started"
            if run_id not in last_finished and (
                row["status"] not in OPEN_RUN_STATUSES
                or row["error"] is not None
                or row["finished"]
            ):
                return record_id, (
                    f"{where}run {run_id}'s status was changed to {row['status']!r}, but the "
                    "run never finished (it has no run_finished record)"
                )
            problem = _strategies_problem(run_id, recorded, strategies.get(run_id, {}))
            if problem is not None:
                return record_id, where + problem
            continue
        if record_id == last_finished[run_id]:
            for field in _FINISHED_FIELDS:
                if field in recorded and row[field] != recorded[field]:
                    return record_id, f"{where}run {run_id}'s {field} was changed after it finished"
        digest = recorded.get("trades_sha256")
        if digest is None:
            continue  # recorded by a build that kept no digest
        form = recorded.get("trades_digest_form", 1)
        if not isinstance(form, int) or form not in DIGEST_TABLES:
            return record_id, (
                f"{where}run {run_id} has a digest of form {form!r}, which this version of "
                "Bastion cannot check; upgrade Bastion"
            )

        def rows(
            table: str, columns: str, order: str, run_id: str = run_id
        ) -> Iterable[Sequence[object]]:
            return view.rows(run_id, table, columns, order)

        if digest != run_digest(rows, form):
            return record_id, (
                f"{where}the {_covers(form)} of run {run_id} were changed after the run finished"
            )
    started = {run_id for _, event, run_id, _ in records if event == "run_started"}
    unvouched = sorted((set(runs) | set(strategies)) - started)
    if unvouched:
        return None, (
            f"run {unvouched[0]} is stored but no audit record says it ever started: "
            "it was added to the database outside Bastion"
        )
    return None


def verify(store: Audited, checkpoints: Checkpoints | None = None) -> AuditCheck:
    """Check a store's audit log and the runs it vouches for; report the first fault.

    In one snapshot: the whole chain (every hash, every link, no id missing, also
    at the end); then, in id order over the ``run_started`` and ``run_finished``
    records, that every stored run still matches what it recorded (see the module
    docstring); then, given ``checkpoints``, that every signed head still matches the
    record it names (a database rewritten whole does not)."""
    with store.audit_view() as view:
        total, first, reason = _chain_problem(view)
        if reason is not None:
            return AuditCheck(ok=False, records=total, first_broken=first, reason=reason)
        problem = _runs_problem(view)
        if problem is not None:
            return AuditCheck(ok=False, records=total, first_broken=problem[0], reason=problem[1])
        if checkpoints is not None:
            anchor = checkpoints.problem(view, getattr(store, "location", None))
            if anchor is not None:
                return AuditCheck(ok=False, records=total, first_broken=anchor[0], reason=anchor[1])
    return AuditCheck(ok=True, records=total, first_broken=None, reason=None)


# --------------------------------------------------------------------------- checkpoints


@attrs.frozen
class Checkpoint:
    """One signed chain head: after run ``run_id`` the log's last record was ``record``
    with hash ``head``; ``location`` names the store."""

    record: int
    head: str
    run_id: str
    location: str
    ts: str


class Checkpoints:
    """The signed chain heads of one environment's data directory.

    ``audit-checkpoints.jsonl`` holds one line per finished run: the head as canonical
    JSON plus an Ed25519 signature over it, made with ``audit-checkpoint.key`` (this
    installation's own key, created on first use, mode 0600, never printed).  Neither
    lives in the database, so rewriting the database — chain and all — leaves heads
    it no longer matches."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / CHECKPOINT_FILE
        self.key_path = data_dir / CHECKPOINT_KEY

    def _private_key(self) -> Any:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            data = self.key_path.read_bytes()
        except FileNotFoundError:
            key = Ed25519PrivateKey.generate()
            data = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temp = self.key_path.with_name(f".{self.key_path.name}.{os.getpid()}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temp, self.key_path)  # whole or not at all; never replaces a key
            except FileExistsError:  # another process made it first: use that one
                return self._private_key()
            finally:
                temp.unlink()
            return key
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except ValueError:
            loaded = None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ConfigError(
                f"{self.key_path}: not an Ed25519 private key; restore it from a backup "
                "(a new key cannot vouch for the existing checkpoints)"
            )
        return loaded

    def append(self, record: int, head: str, run_id: str, location: str) -> Checkpoint:
        """Sign the chain head after a run and append it (fsynced) to the file."""
        point = Checkpoint(record, head, run_id, location, format_ts(datetime.now(UTC)))
        body = canonical_json(attrs.asdict(point))
        signature = self._private_key().sign(body.encode())
        line = canonical_json(
            {"checkpoint": json.loads(body), "sig": base64.b64encode(signature).decode()}
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # several kernels on one data directory: whole lines
            os.write(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return point

    def read(self) -> list[tuple[int, Checkpoint | None, str | None]]:
        """``(line number, checkpoint, problem)`` for every line; a line that is not
        valid or whose signature does not verify has a problem and no checkpoint."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if self.key_path.exists():  # the key is made only to sign the first line
                return [(0, None, f"{self.path} is missing: the signed heads were removed")]
            return []
        if not self.key_path.exists():
            return [(0, None, f"{self.key_path} is missing: the checkpoints cannot be checked")]
        public = self._private_key().public_key()
        out: list[tuple[int, Checkpoint | None, str | None]] = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                entry = json.loads(line)
                body = canonical_json(entry["checkpoint"])
                public.verify(base64.b64decode(entry["sig"], validate=True), body.encode())
                out.append((number, Checkpoint(**entry["checkpoint"]), None))
            except Exception as exc:
                reason = (
                    "bad signature" if type(exc).__name__ == "InvalidSignature" else "unreadable"
                )
                out.append((number, None, f"{self.path.name} line {number}: {reason}"))
        return out

    def count(self, location: str | None = None) -> int:
        """How many valid signed heads there are (``location``: of that store only)."""
        return sum(
            1
            for _, point, _ in self.read()
            if point is not None and (location is None or point.location == location)
        )

    def problem(
        self, view: AuditView, location: str | None = None
    ) -> tuple[int | None, str] | None:
        """The first signed head the store's log no longer matches (``location``: only
        heads of that store), or ``None``."""
        points = self.read()
        if not points:
            return None
        hashes = {record.id: record.hash for record in view.records()}
        for _, point, problem in points:
            if point is None:
                return None, problem or "unreadable checkpoint"
            if location is not None and point.location != location:
                continue
            stored = hashes.get(point.record)
            if stored is None:
                return point.record, (
                    f"record {point.record}, signed as the head after run {point.run_id} "
                    f"({self.path.name}), is no longer in the log"
                )
            if stored != point.head:
                return point.record, (
                    f"record {point.record} no longer has the hash signed after run "
                    f"{point.run_id} ({self.path.name}): the log was rewritten"
                )
        return None
