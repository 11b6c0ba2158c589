"""Built-in observer: strategy admissions and refusals become JSON lines in the log.

Orders and fills are not repeated here: the store records every one of them
(with the strategy's SHA-256 and signer) and the audit chain covers them; the
engine logs rejections, margin calls and quarantines itself.
"""

from __future__ import annotations

from typing import Any

from bastion import hookimpl
from bastion.log import get_logger


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
