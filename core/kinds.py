"""What a meter measures (heat, water, material), how it reports it (total, rate, delta), and
each kind's canonical unit: the vocabulary the network model and unit conversion share."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    heat = "heat"
    water = "water"
    material = "material"


CANONICAL_UNIT: dict[Kind, str] = {Kind.heat: "MWh", Kind.water: "m3", Kind.material: "t"}


class ReadingType(StrEnum):
    total = "total"
    rate = "rate"
    delta = "delta"
