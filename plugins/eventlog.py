"""Built-in observer: every kernel event becomes a JSON line in the environment's log."""

from __future__ import annotations

from typing import Any

from bastion import hookimpl
from bastion._logging import get_logger


@hookimpl
def strategy_loaded(strategy: Any) -> None:
    get_logger().info(
        "strategy_loaded",
        file=strategy.name,
        sha256=strategy.sha256,
        signer=strategy.signer,
        signer_name=strategy.signer_name,
        whitelist_version=strategy.whitelist_version,
        unsigned=strategy.unsigned,
    )
    if strategy.unsigned:
        get_logger().warning("unsigned_strategy_loaded", file=strategy.name, sha256=strategy.sha256)


@hookimpl
def strategy_refused(refusal: Any) -> None:
    get_logger().warning(
        "strategy_refused",
        file=str(refusal.path),
        status=str(refusal.status),
        reason=refusal.reason,
    )


@hookimpl
def order_event(order: Any, status: str, reason: str | None) -> None:
    get_logger().info("order", status=status, reason=reason, order=repr(order))


@hookimpl
def fill_event(fill: Any, strategy: Any) -> None:
    get_logger().info("fill", fill=repr(fill), strategy=strategy.name, sha256=strategy.sha256)
