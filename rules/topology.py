"""What the rules engine derives from a network once: windows per meter, exchanges and
reconciliation components per meter, rule settings per subject."""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from core.network import Balance, Exchange, Meter, Network
from core.rule_settings import rule_config
from rules import incidents
from rules.alerts import Rule
from rules.reconcile import Constraint, balance_constraint, exchange_constraint


@dataclass(frozen=True)
class Component:
    """A connected part of the network with at least one balance: reconciled as a whole."""

    id: str
    meters: tuple[str, ...]
    constraints: tuple[Constraint, ...]
    window: timedelta


@dataclass
class Topology:
    net: Network
    version: str
    tz: ZoneInfo
    meters: dict[str, Meter]
    meter_window: dict[str, timedelta]
    exchanges: dict[str, Exchange]
    exchanges_of: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    components: dict[str, Component] = field(default_factory=dict)
    component_of: dict[str, str] = field(default_factory=dict)
    counterpart: dict[str, tuple[str, str]] = field(default_factory=dict)
    _rules: dict[tuple[Rule, str], Any] = field(default_factory=dict, repr=False, compare=False)

    def rule(self, rule: Rule, subject: str) -> Any:
        """The settings of ``rule`` for an exchange or meter, overrides applied (worked out
        once per subject: the network does not change under a topology)."""
        key = (rule, subject)
        config = self._rules.get(key)
        if config is None:
            if subject in self.exchanges:
                config = rule_config(rule, self.exchanges[subject].rules.get(rule))
            else:
                config = rule_config(rule, self.net.meter_rules.get(subject, {}).get(rule))
            self._rules[key] = config
        return config

    @functools.cached_property
    def incident_keys(self) -> incidents.Keys:
        """What alerts are about, for grouping them into incidents (every pass asks; built
        once, as it walks every exchange)."""
        return incidents.Keys(
            {e.id: [*e.sent, *e.received] for e in self.exchanges.values()}, self.exchanges_of
        )

    def unit(self, exchange_id: str) -> str:
        from core.network import CANONICAL_UNIT

        return CANONICAL_UNIT[self.exchanges[exchange_id].kind]


def build_topology(net: Network, version: str = "") -> Topology:
    topo = Topology(
        net=net,
        version=version,
        tz=net.tz,
        meters={m.id: m for m in net.meters},
        meter_window=net.meter_windows(),
        exchanges={e.id: e for e in net.exchanges},
    )
    for ex in net.exchanges:
        for mid in (*ex.sent, *ex.received):
            topo.exchanges_of[mid].append(ex.id)
        for mid in ex.sent:
            topo.counterpart.setdefault(mid, (ex.id, "received"))
        for mid in ex.received:
            topo.counterpart.setdefault(mid, (ex.id, "sent"))

    # Components: union-find over meters linked by balances and exchanges; only the parts
    # with a balance need a network reconciliation (a lone exchange takes the exchange formula).
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(items: list[str]) -> None:
        for other in items[1:]:
            parent[find(other)] = find(items[0])

    for bal in net.balances:
        union([*bal.in_, *bal.out])
    for ex in net.exchanges:
        union([*ex.sent, *ex.received])
    groups: dict[str, list[str]] = defaultdict(list)
    for mid in parent:
        groups[find(mid)].append(mid)
    # Each balance and exchange in the group of its meters (all of them are in one), in the
    # file's order: one pass over each, not one per group.
    balances_of: dict[str, list[Balance]] = defaultdict(list)
    for bal in net.balances:
        balances_of[find(bal.in_[0])].append(bal)
    exchanges_in: dict[str, list[Exchange]] = defaultdict(list)
    for ex in net.exchanges:
        exchanges_in[find(ex.sent[0])].append(ex)
    for root, members in groups.items():
        balances = balances_of.get(root)
        if not balances:
            continue
        exchanges = exchanges_in.get(root, [])
        constraints = [balance_constraint(b.id, b.in_, b.out, b.loss) for b in balances] + [
            exchange_constraint(e.id, e.sent, e.received, e.loss) for e in exchanges
        ]
        window = max([b.window for b in balances] + [e.window for e in exchanges])
        cid = "+".join(sorted(b.id for b in balances))
        topo.components[cid] = Component(cid, tuple(sorted(members)), tuple(constraints), window)
        for mid in members:
            topo.component_of[mid] = cid
    return topo
