"""What a caller may see of the network: everything, or one partner's part of it.

A partner sees its own meters, the exchanges it provides or receives (and therefore the
windows computed from both ends of them), the balances made only of meters it sees, its own
statements and rejections, and alerts about any of these or about itself.  Anything else is
answered as if it did not exist (404), so a partner cannot even learn what others have.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    return Scope(
        network,
        me,
        frozenset({me}),
        meters,
        meters | behind,
        frozenset(e.id for e in exchanges),
        balances,
    )
