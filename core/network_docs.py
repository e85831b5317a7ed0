"""The network file's reference, written from the typed model itself.

``python -m core.network_docs`` writes ``docs/network-file.md`` (``--check`` only says whether
it is current); ``symbiont network docs`` prints it. Each field's type, default and constraints
come from :mod:`core.network`'s pydantic models, its meaning from the field's description, and
the alert rule settings from :mod:`core.rule_settings`, so the page cannot drift from what
``symbiont network validate`` accepts.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from datetime import date, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from core.kinds import CANONICAL_UNIT, Kind
from core.network import (
    EXCHANGE_RULES,
    ID_RE,
    METER_RULES,
    Balance,
    Exchange,
    Meter,
    Network,
    NetworkError,
    Partner,
    SparkplugSource,
    StatementSettings,
    Terms,
    _window,
    format_duration,
    load_network,
)
from core.rule_settings import RULE_CONFIG, RULE_DOCS, SETTING_DOCS

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "docs" / "network-file.md"
EXAMPLES = REPO / "examples"

# (heading, YAML path shown, model): the sections of the page, in the file's order.
SECTIONS: list[tuple[str, str, type[BaseModel]]] = [
    ("Top level", "", Network),
    ("Partners", "partners[]", Partner),
    ("Meters", "meters[]", Meter),
    ("Sparkplug", "meters[].sparkplug", SparkplugSource),
    ("Exchanges", "exchanges[]", Exchange),
    ("Terms", "exchanges[].terms[]", Terms),
    ("Balances", "balances[]", Balance),
    ("Statements", "statements", StatementSettings),
]
ANCHORS = {model: heading.lower() for heading, _, model in SECTIONS}

EXAMPLE = """\
network: harbour
name: Harbour Industrial Park
timezone: Europe/Copenhagen
currency: EUR

partners:
  - id: plant
    name: Harbour Power Station
  - id: town
    name: Town District Heating
    email: billing@town.example

meters:
  - id: plant-heat-out
    partner: plant
    kind: heat
    reading: total          # a register: the energy delivered so far
    unit: GJ
    uncertainty: 0.017      # 1.7 % (1 σ)
    interval: 60            # a reading a minute
  - id: town-heat-in
    partner: town
    kind: heat
    reading: total
    unit: kWh
    uncertainty: 0.018
    interval: 60

exchanges:
  - id: heat-plant-town
    provider: plant
    receiver: town
    kind: heat
    sent: [plant-heat-out]
    received: [town-heat-in]
    loss: 0.05              # 5 % expected lost in the pipe
    window: 1h
    terms:
      - from: 2026-01-01
        price: 28.00                  # EUR per MWh
        receiver_avoided_cost: 45.00  # what the town's own boilers would cost
        receiver_avoided_co2: 0.191   # t CO2 per MWh they no longer emit
    rules:
      imbalance: {z: 4}     # alert on larger imbalances only
"""

CROSS_CHECKS = [
    "ids are unique within partners, meters, exchanges and balances",
    "every meter's `partner` is a partner of the file, and its `unit` converts to its kind's"
    " canonical unit (per hour for `rate` meters)",
    "`total` and `rate` meters have an `interval`; `uncertainty` and `uncertainty_abs` are not"
    " both 0",
    "an exchange's `provider` and `receiver` are two different partners; each meter in `sent`"
    " belongs to the provider and each in `received` to the receiver; all measure the"
    " exchange's kind; no meter is listed twice or on both sides",
    "a balance's meters measure its kind, and none is both `in` and `out`",
    "a meter's windows nest: every exchange window is a multiple of the finest window among"
    " the exchanges and balances the meter is part of",
    "a window divides a day (`1m` … `1d`)",
    "the `from` dates of an exchange's terms strictly increase",
    "rule settings name a known rule for their place and known settings of it, with values"
    " of the right type",
]


def constraints(info: FieldInfo) -> list[str]:
    """A field's limits as a person reads them: ``≥ 0``, ``at most 64 characters`` …"""
    out = []
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            out.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            out.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            out.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            out.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen):
            out.append(f"at least {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            out.append(f"at most {item.max_length} characters")
        elif getattr(item, "pattern", None):
            pattern = item.pattern
            known = {ID_RE: "lowercase letters, digits and `-`", "^[A-Z]{3}$": "3 capital letters"}
            out.append(known.get(pattern, f"`{pattern}`"))
    return out


def _type(annotation: Any, info: FieldInfo | None = None) -> str:
    """A field's type as a person reads it."""
    if info is not None and any(getattr(m, "func", None) is _window for m in info.metadata):
        return "duration: `15m`, `1h`, `1d` (`s`, `m`, `h`, `d`)"
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _type(args[0], info) if len(args) == 1 else " or ".join(_type(a) for a in args)
    if origin is list:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return f"list of [{ANCHORS[inner]}](#{ANCHORS[inner]})"
        return "list of ids" if inner is str else f"list of {_type(inner)}"
    if origin is dict:
        nested = typing.get_origin(args[1]) is dict if len(args) == 2 else False
        return "mapping: meter id → rule → settings" if nested else "mapping: rule → settings"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{member.value}`" for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{ANCHORS[annotation]}](#{ANCHORS[annotation]})"
    names = {
        str: "text",
        float: "number",
        int: "whole number",
        bool: "`true` \\| `false`",
        Decimal: "decimal number",
        date: "date",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        return "—"
    value = info.default
    if value is None:
        return "—"
    if isinstance(value, timedelta):
        return f"`{format_duration(value)}`"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if "\\|" not in text else text


def _field_table(path: str, model: type[BaseModel]) -> list[str]:
    lines = ["| field | type | default | what |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if not info.description:
            raise ValueError(f"{model.__name__}.{name} has no Field(description=...)")
        key = info.alias or name
        kind = _type(info.annotation, info)
        limits = constraints(info)
        if limits:
            kind += ", " + ", ".join(limits)
        shown = f"`{path}.{key}`" if path else f"`{key}`"
        lines.append(f"| {shown} | {kind} | {_default(info)} | {_cell(info.description)} |")
    return lines


def _rule_tables() -> list[str]:
    lines: list[str] = []
    places = [
        ("exchanges[].rules", "an exchange", sorted(EXCHANGE_RULES)),
        ("meter_rules.METER", "a meter", sorted(METER_RULES)),
    ]
    for where, subject, rules in places:
        lines += [f"### Under `{where}`, for {subject}", ""]
        for rule in rules:
            lines += [f"`{rule}`: {RULE_DOCS[rule]}.", ""]
            lines += ["| setting | default | what |", "|---|---|---|"]
            for item in fields(RULE_CONFIG[rule]):
                if item.default is MISSING:
                    raise ValueError(f"{rule}.{item.name} has no default")
                doc = SETTING_DOCS.get((rule, item.name))
                if doc is None:
                    raise ValueError(f"rule setting {rule}.{item.name} is not described")
                value = item.default
                shown = f"{value:g}" if isinstance(value, float) else str(value).lower()
                default = "—" if value is None else f"`{shown}`"
                lines.append(f"| `{item.name}` | {default} | {_cell(doc)} |")
            lines.append("")
    return lines


def _examples() -> list[str]:
    lines = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        try:
            net = load_network(path)
        except NetworkError:  # the example tests say what is wrong with it
            continue
        lines.append(
            f"- [`examples/{path.name}`](../examples/{path.name}): {net.name} —"
            f" {len(net.partners)} partners, {len(net.meters)} meters,"
            f" {len(net.exchanges)} exchanges, {len(net.balances)} balances"
        )
    return lines


def render() -> str:
    """The whole page, as Markdown."""
    units = ", ".join(f"{kind.value} in **{CANONICAL_UNIT[kind]}**" for kind in Kind)
    out = [
        "# The network file",
        "",
        "<!-- Generated from the typed model (core/network.py, core/rule_settings.py) by"
        " `python -m core.network_docs`; edit those, not this page. -->",
        "",
        "One YAML file describes a network: its partners, their meters, the exchanges between",
        "them and the balances inside them, with the prices and savings that statements bill.",
        "`symbiont network validate FILE` checks it and `symbiont network apply FILE` loads it",
        "into the database. Applying is idempotent: only what changed is written, and a meter",
        "or exchange the file no longer names is retired (its history stays), never deleted;",
        "`apply` says how many partners, meters, exchanges and balances it added, changed and",
        "removed, and the same file again changes nothing. A file of 150,000 meters validates",
        "and applies in well under a minute (see [scaling](scaling.md)).",
        "Every problem is reported with its YAML path, for instance",
        "`exchanges[3].sent[0]: unknown meter 'x'`, and then nothing is applied.",
        "",
        "Examples to start from:",
        "",
        *_examples(),
        "",
        "A small network, complete:",
        "",
        "```yaml",
        EXAMPLE.rstrip("\n"),
        "```",
        "",
        f"Quantities are kept in each kind's canonical unit: {units} (MW, m3/h and t/h for",
        "rates). Meters may send any unit that converts to it.",
        "",
    ]
    for heading, path, model in SECTIONS:
        intro = (model.__doc__ or "").strip()
        out += [f"## {heading}", ""]
        if intro:
            out += [" ".join(intro.split()), ""]
        out += [*_field_table(path, model), ""]
    out += [
        "## Checks across the file",
        "",
        "Beyond each field's own type and limits, `validate` and `apply` check that:",
        "",
        *(f"- {check}" for check in CROSS_CHECKS),
        "",
        "## Alert rule settings",
        "",
        "An exchange's `rules:` and the top-level `meter_rules:` (keyed by meter id) change",
        "the alert rules' settings for that exchange or meter; whatever is not named keeps its",
        "default. A rule set to `off` (or `false`) is turned off there. What each rule does,",
        "and when its alerts start and end, is in [alerts](alerts.md).",
        "",
        "```yaml",
        "exchanges:",
        "  - id: steam-asnaes-novo",
        "    # …",
        "    rules:",
        "      imbalance: {z: 4, fire_after: 3}",
        "      drift: off",
        "meter_rules:",
        "  novo-steam-in:",
        "    meter_stale: {after_s: 900}",
        "```",
        "",
        *_rule_tables(),
    ]
    return "\n".join(out).rstrip("\n") + "\n"


def write_or_check(out: Path, text: str, *, check: bool, command: str) -> int:
    """Write a generated page, or with ``check`` only say whether it is current (exit 1)."""
    if check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            print(f"{out} is out of date: run python -m {command}", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


def page_main(
    argv: list[str] | None, *, module: str, what: str, target: Path, render: Callable[[], str]
) -> int:
    """The command line of a generated page: ``python -m MODULE [--out FILE] [--check]``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=f"write {what}")
    parser.add_argument("--out", type=Path, default=target, help=f"default {target}")
    parser.add_argument(
        "--check", action="store_true", help="only check that the file is current (exit 1 if not)"
    )
    args = parser.parse_args(argv)
    return write_or_check(args.out, render(), check=args.check, command=module)


def main(argv: list[str] | None = None) -> int:
    return page_main(
        argv,
        module="core.network_docs",
        what="the network file's reference",
        target=TARGET,
        render=render,
    )


if __name__ == "__main__":
    raise SystemExit(main())
