"""What a caller may see of the network: everything, or one partner's part of it.

A partner sees its own meters, the exchanges it provides or receives (and therefore the
windows computed from both ends of them), the balances made only of meters it sees, its own
statements and rejections, and alerts about any of these or about itself.  Anything else is
answered as if it did not exist (404), so a partner cannot even learn what others have; in a
rejection, another partner's meter it named is an unknown one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from api.tokens import Principal, Role
from core.network import Network


@dataclass(frozen=True, slots=True)
class Scope:
    network: Network
    partner: str | None  # None: sees everything
    partners: frozenset[str]
    meters: frozenset[str]  # meters whose readings it may read
    exchange_meters: frozenset[str]  # meters behind the exchanges it sees
    exchanges: frozenset[str]
    balances: frozenset[str]
    hidden: frozenset[str] = field(default=frozenset())  # ids it must never read

    @property
    def everything(self) -> bool:
        return self.partner is None

    def subjects(self) -> frozenset[str]:
        """Alert subjects it may see (exchanges, meters, partners)."""
        return self.exchanges | self.meters | self.partners

    def sees_alert(self, subject: str, subject_kind: str) -> bool:
        if self.everything:
            return True
        if subject_kind == "exchange":
            return subject in self.exchanges
        if subject_kind == "meter":
            return subject in self.meters
        return subject in self.partners

    def redact(self, value: Any) -> Any:
        """``value`` (text, or JSON-like data) with every identifier this caller may not see
        replaced by a neutral word: alert summaries and details and reconciliation components
        name other partners' meters and balances."""
        if self.everything or not self.hidden:
            return value
        pattern = _pattern(self.hidden)
        return _redact(value, pattern)

    def redact_alert(self, alert: dict[str, Any]) -> dict[str, Any]:
        if self.everything:
            return alert
        return {
            **alert,
            "summary": self.redact(alert["summary"]),
            "details": self.redact(alert["details"]),
            "ack_comment": self.redact(alert.get("ack_comment")),
        }

    def rejection(self, reason: str, detail: str, meter: str | None) -> tuple[str, str, str | None]:
        """(reason, detail, meter) of a rejection as this caller may see them.

        A meter of another partner named under this partner's topic is stored as
        ``wrong_partner`` with its owner in the detail; a partner is shown it exactly as a
        meter that does not exist (``unknown_meter``, no meter, the same detail the parser
        gives one), so it cannot tell whether the meter exists, nor whose it is."""
        if self.everything or reason != WRONG_PARTNER:
            return reason, detail, meter
        where = _WHERE.match(detail)
        prefix = where.group() if where else ""
        return UNKNOWN_METER, f"{prefix}unknown meter '{meter or ''}'", None


REDACTED = "(not shared)"
WRONG_PARTNER, UNKNOWN_METER = "wrong_partner", "unknown_meter"
# Where in a batch or SenML pack the rejected reading was: "readings[3]: ", "records[0]: ".
_WHERE = re.compile(r"(?:readings|records)\[[0-9]+\]: ", re.ASCII)


@lru_cache(maxsize=256)
def _pattern(hidden: frozenset[str]) -> re.Pattern[str]:
    names = "|".join(re.escape(h) for h in sorted(hidden, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{names})(?![\w-])")


def _redact(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value)
    if isinstance(value, dict):
        return {_redact(k, pattern): _redact(v, pattern) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, pattern) for v in value]
    return value


def scope_for(network: Network, principal: Principal) -> Scope:
    if principal.role is not Role.partner:
        return Scope(
            network,
            None,
            frozenset(p.id for p in network.partners),
            frozenset(m.id for m in network.meters),
            frozenset(m.id for m in network.meters),
            frozenset(e.id for e in network.exchanges),
            frozenset(b.id for b in network.balances),
        )
    me = principal.partner
    assert me is not None
    meters = frozenset(m.id for m in network.meters if m.partner == me)
    exchanges = [e for e in network.exchanges if me in (e.provider, e.receiver)]
    behind = frozenset(mid for e in exchanges for mid in (*e.sent, *e.received))
    balances = frozenset(b.id for b in network.balances if set(b.in_) | set(b.out) <= meters)
    counterparts = {p for e in exchanges for p in (e.provider, e.receiver)}
    visible = {me} | counterparts | meters | behind | {e.id for e in exchanges} | balances
    every = {p.id for p in network.partners} | {m.id for m in network.meters}
    every |= {e.id for e in network.exchanges} | {b.id for b in network.balances}
    return Scope(
        network,
        me,
        frozenset({me}),
        meters,
        meters | behind,
        frozenset(e.id for e in exchanges),
        balances,
        frozenset(every - visible),
    )
