"""A sandboxed strategy worker: ``python -I -m bastion._worker FD PARENT``.

Started by :class:`bastion._sandbox.WorkerHost` as a fresh interpreter with an
empty environment, an empty temporary working directory and no descriptor
but the shared-memory channel ``FD`` (and a pipe for stray output on 1 and
2).  It imports everything it will need, waits for the kernel's setup,
**locks itself down** (:mod:`bastion._lockdown`) and reports its layers; only
then does it receive the strategy's verified bytes, compile exactly those
and run them (:mod:`bastion._module`, the same loader the in-process host
uses).  From there on it answers one event at a time.

Once strategy code has run, nothing this process says is trusted: the kernel
validates every answer (:mod:`bastion._protocol`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

NAP = 0.002  # seconds a waiting worker blocks at a time (bounds a lost wake-up)
EXIT_MEMORY = 86  # out of memory outside strategy code (the kernel reports memory-limit)
EXIT_INTERNAL = 70


def _preimport() -> None:
    """Everything a strategy may import, and everything the worker will use, loaded
    while files can still be read (after the lock-down, almost nothing can)."""
    import _strptime  # noqa: F401  (datetime.strptime imports it lazily)
    import faulthandler
    import importlib

    from . import _module

    for name in sorted(_module.ALLOWED_IMPORTS):
        if name != "__future__":
            importlib.import_module(name)
    import encodings.idna  # noqa: F401
    import traceback  # noqa: F401

    import pluggy  # noqa: F401
    import pyseccomp  # noqa: F401

    from . import _landlock, hookspecs, models, strategy  # noqa: F401

    faulthandler.enable(file=2)


class _Sink:
    """``sys.stdout``/``sys.stderr`` of the worker: text goes to the strategy's log."""

    def __init__(self) -> None:
        self.target: Callable[[str], None] = lambda text: None

    def write(self, text: str) -> int:
        self.target(str(text))
        return len(text)

    def flush(self) -> None:
        pass


def main() -> None:
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    os.environ.clear()  # started with none; this drops the interpreter's own LC_CTYPE too
    _preimport()

    import pwd
    from decimal import Decimal

    import msgpack

    from . import _protocol as p
    from ._channel import (
        K_KIND,
        K_LENGTH,
        K_PAYLOAD,
        K_SEQ,
        K_SLEEPING,
        W_CAP,
        W_KIND,
        W_LENGTH,
        W_PAYLOAD,
        W_SEQ,
        W_SLEEPING,
        Channel,
    )
    from ._context import StrategyError, StrategyRunner
    from ._lockdown import Limits, lock_down
    from ._module import LoadFailure, load_module
    from .models import Bar, OrderIntent

    channel = Channel(fd, spin=0)
    os.close(fd)
    words, memory = channel.words, channel.map
    sink = _Sink()
    sys.stdout = sys.stderr = sink

    seq = 0

    def orphaned() -> None:
        """Between naps: a worker whose kernel is gone exits (the parent-death signal
        is the first line of defence; this is the second)."""
        if os.getppid() != parent:
            os._exit(0)

    def next_frame() -> tuple[int, int]:
        nonlocal seq
        seq = channel.wait(K_SEQ, seq, W_SLEEPING, NAP, orphaned)
        return words[K_KIND], words[K_LENGTH]

    def payload(length: int, start: int = K_PAYLOAD) -> bytes:
        return memory[start : K_PAYLOAD + length]

    def answer(kind: int, data: bytes = b"") -> None:
        size = len(data)
        if size > W_CAP:
            data = p.pack({"seq": seq})  # cannot happen with the worker's own caps
            size = len(data)
        if size:
            memory[W_PAYLOAD : W_PAYLOAD + size] = data
        words[W_LENGTH] = size
        words[W_KIND] = kind
        channel.post(W_SEQ, seq, K_SLEEPING)

    # -- setup, lock-down, load ----------------------------------------------------
    kind, length = next_frame()
    if kind != p.K_SETUP:
        os._exit(EXIT_INTERNAL)
    setup = msgpack.unpackb(payload(length), raw=False)
    try:
        entry = pwd.getpwnam("nobody")
        nobody: tuple[int, int] | None = (entry.pw_uid, entry.pw_gid)
    except KeyError:
        nobody = None
    layers = lock_down(
        Limits(setup["memory_mb"], setup["cpu_seconds"], setup["open_files"]),
        parent,
        nobody,
        frozenset(setup["skip"]),
    )
    answer(p.W_REPLY, p.pack({"seq": seq, "layers": [list(layer) for layer in layers]}))

    kind, length = next_frame()
    if kind != p.K_LOAD:  # the kernel refused the layers: nothing more to do
        os._exit(0)
    load = msgpack.unpackb(payload(length), raw=False)
    name, filename = load["name"], load["filename"]
    early: list[str] = []
    output = [lambda text: early.append(text.rstrip("\n")[:1000]) if len(early) < 20 else None]
    sink.target = lambda text: output[0](text)
    loaded = load_module(name, filename, load["source"], lambda text: output[0](text))
    del load
    layer_list = [list(layer) for layer in layers]
    if isinstance(loaded, LoadFailure):
        answer(
            p.W_LOAD_FAILED,
            p.pack(
                {"seq": seq, "status": loaded.status, "reason": loaded.reason, "layers": layer_list}
            ),
        )
        os._exit(0)
    answer(
        p.W_LOADED,
        p.pack(
            {
                "seq": seq,
                "hooks": list(loaded.hooks),
                "params": dict(loaded.params),
                "layers": layer_list,
                "logs": [["info", "print", {"text": t}] for t in early],
            }
        ),
    )

    # -- events ---------------------------------------------------------------------
    runner: StrategyRunner | None = None
    symbols: list[str] = []
    BAR_SIZE, K_BAR, W_EMPTY = p.BAR.size, p.K_BAR, p.W_EMPTY
    unpack_bar = p.BAR.unpack_from
    build = p.bar_builder()
    to_datetime = p.BarClock().to_datetime
    encode_intent, pack = p.encode_intent, p.pack
    unpack = msgpack.unpackb
    wait, post = channel.wait, channel.post

    def apply(updates: list[list[Any]]) -> None:
        """The kernel's notes since the last frame, in order (no strategy code runs)."""
        assert runner is not None
        for note in updates:
            if note[0] == "w":
                runner.working(note[1], Decimal(note[2]))
            else:  # a fill of a strategy without on_fill: ctx.now, cash, positions, marks
                runner.fill(p.decode_fill(note[1]), p.decode_account(note[2]))

    def reply(intents: list[OrderIntent] | None, error: StrategyError | None = None) -> None:
        assert runner is not None
        logs = runner.take_logs()
        if not intents and not logs and error is None:
            answer(p.W_EMPTY)
            return
        message: dict[str, object] = {"seq": seq}
        if intents:
            message["i"] = [encode_intent(i) for i in intents]
        if logs:
            message["l"] = [[level, event, dict(fields)] for level, event, fields in logs]
        if error is not None:
            message["f"] = [error.kind, error.hook, error.reason, error.traceback]
        answer(p.W_REPLY, pack(message))

    on_bar: Callable[[Bar], list[OrderIntent] | None] | None = None  # set by K_START
    while True:
        # The hot path, a bar, is written out inline: it runs once per bar.
        value = words[K_SEQ]
        if value == seq:
            value = wait(K_SEQ, seq, W_SLEEPING, NAP, orphaned)
        seq = value
        kind = words[K_KIND]
        if kind == K_BAR:
            flags, index, us, o, h, lo, c, v = unpack_bar(memory, K_PAYLOAD)
            if flags & 6:  # a new symbol, or notes to apply first
                extra = unpack(payload(words[K_LENGTH], K_PAYLOAD + BAR_SIZE), raw=False)
                if flags & p.BAR_SYMBOL:
                    symbols.append(extra[0])
                if flags & p.BAR_UPDATES:
                    apply(extra[1])
            bar = build(symbols[index], to_datetime(us), o, h, lo, c, v if flags & 1 else None)
            try:
                assert on_bar is not None
                intents = on_bar(bar)
            except StrategyError as exc:
                reply(None, exc)
                continue
            if intents is None:  # nothing asked, nothing logged
                words[W_LENGTH] = 0
                words[W_KIND] = W_EMPTY
                post(W_SEQ, seq, K_SLEEPING)
            else:
                reply(intents)
            continue
        length = words[K_LENGTH]
        message = unpack(payload(length), raw=False)
        if kind == p.K_EXIT:
            os._exit(0)
        if kind == p.K_START:
            updates, params, account, spin = message
            channel.set_spin(*spin)
            runner = StrategyRunner(name, filename, loaded.functions, params)
            on_bar = runner.bar
            output[0] = runner.output
            apply(updates)
            try:
                reply(runner.start(p.decode_account(account)))
            except StrategyError as exc:
                reply(None, exc)
            continue
        assert runner is not None
        apply(message[0])
        try:
            if kind == p.K_FILL:
                reply(runner.fill(p.decode_fill(message[1]), p.decode_account(message[2])))
            elif kind == p.K_REJECT:
                reply(runner.reject(p.decode_intent_trusted(message[1]), message[2]))
            elif kind == p.K_STOP:
                reply(runner.stop())
            else:
                os._exit(EXIT_INTERNAL)
        except StrategyError as exc:
            reply(None, exc)


if __name__ == "__main__":
    try:
        main()
    except MemoryError:
        os._exit(EXIT_MEMORY)
    except BaseException:
        import traceback

        traceback.print_exc(file=sys.__stderr__)
        os._exit(EXIT_INTERNAL)
    os._exit(0)
