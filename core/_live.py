"""The live driver: feeds the engine a paper or live run's events as they arrive.

The backtest driver (:meth:`bastion._engine.Engine.run`) hands the engine bars from
an iterator, and the simulator's fills come out of ``on_bar``.  A live run has three
sources of events instead, each on its own clock:

* bars, from a source whose iterator blocks until the next bar closes (read on a
  thread of their own);
* the broker's fills and order updates, pushed whenever the broker hears of them
  (a broker with ``listen(wake)`` wakes the driver; ``poll()`` hands them over);
* time: a tick every ``tick`` seconds, so the operator's halt file is seen and a
  broker's delayed news are asked for even when no bar comes.

This driver runs on asyncio in the calling thread and hands every event, one at a
time, to :meth:`~bastion._engine.Engine.handle`: the engine's core
(:class:`bastion._core.EngineCore`, the state machine a backtest runs too) decides
what the event calls for, and the engine carries its commands out.  Broker news
first, then bars, then the tick.  Neither waits.  The run ends when the source
ends (the operator's stop event ends it) or fails with the source's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ._engine import Engine, RunResult, Tick
from .models import Bar

__all__ = ["drive"]

TICK = 0.5  # seconds between timer events


def drive(
    engine: Engine, bars: Iterator[Bar], stop: threading.Event, *, tick: float = TICK
) -> RunResult:
    """Run ``engine`` on a live run's events until ``bars`` ends; its result."""
    with engine.session():
        asyncio.run(_drive(engine, bars, stop, tick))
    return engine.result()


async def _drive(engine: Engine, bars: Iterator[Bar], stop: threading.Event, tick: float) -> None:
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    arrived: deque[Bar] = deque()
    ended: list[BaseException | None] = []  # the source's end: None, or its error

    def bar_arrived(bar: Bar) -> None:
        arrived.append(bar)
        wake.set()

    def source_ended(error: BaseException | None) -> None:
        ended.append(error)
        wake.set()

    def read() -> None:
        error: BaseException | None = None
        try:
            for bar in bars:
                loop.call_soon_threadsafe(bar_arrived, bar)
        except BaseException as exc:  # handed to the driver, raised there
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the run failed
            loop.call_soon_threadsafe(source_ended, error)

    broker: Any = engine.broker
    poll = getattr(broker, "poll", None)
    listen = getattr(broker, "listen", None)
    if callable(listen):
        listen(lambda: loop.call_soon_threadsafe(wake.set))
    reader = threading.Thread(target=read, name="bastion-bars", daemon=True)
    reader.start()
    next_tick = loop.time() + tick
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(next_tick - loop.time(), 0.0))
            wake.clear()
            if poll is not None:
                for update in poll():
                    engine.handle(update)
            while arrived:
                engine.handle(arrived.popleft())
            if ended:
                if ended[0] is not None:
                    raise ended[0]
                return
            if loop.time() >= next_tick:
                next_tick = loop.time() + tick
                engine.handle(Tick(datetime.now(UTC)))
    finally:
        if callable(listen):
            listen(lambda: None)
        if not ended:
            stop.set()  # the run failed: the source's iterator ends at its next look
        reader.join(timeout=5)
