"""Unit conversion to each kind's canonical unit (MWh, m3, t; per hour for rates).

pint parses and checks the dimension once per distinct (unit, kind, reading type); the
resulting factor is cached, so ingest multiplies by a float per reading and never calls pint
on the hot path.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import pint

from core.kinds import CANONICAL_UNIT, Kind, ReadingType

_ureg: Any = pint.UnitRegistry()
# District-heating practice (and the Danish tables) use the international-table calorie.
_ureg.define("Gcal = 1e9 * international_calorie")
_ureg.define("Mcal = 1e6 * international_calorie")
_ureg.define("MMBtu = 1e6 * Btu = mmBtu")
_ureg.define("Nm3 = meter ** 3")

_POWER_SUFFIX = re.compile(r"(?<![A-Za-z])(m|dm|cm|km)([23])(?![0-9])")


# The largest magnitude a reading may have in its canonical unit: ingest rejects larger ones
# (``out_of_range``) and the rules engine refuses to compute with one stored anyway.
MAX_CANONICAL_VALUE = 1e12


class UnitError(ValueError):
    """A unit that pint does not know or that does not convert to the meter's kind."""


def canonical_unit(kind: Kind, reading: ReadingType) -> str:
    base = CANONICAL_UNIT[kind]
    return f"{base}/h" if reading == ReadingType.rate else base


def _normalise(unit: str) -> str:
    text = unit.strip().replace("³", "^3").replace("²", "^2")
    return _POWER_SUFFIX.sub(r"\1^\2", text)


def conversion(unit: str, kind: Kind | str, reading: ReadingType | str) -> float:
    """The factor that turns a value in ``unit`` into the canonical unit of kind and reading.

    Raises UnitError naming the unit and the kind when it does not convert. Answers, refusals
    included, are cached: a device repeating a bad unit costs pint once.
    """
    answer = _cached(unit, kind, reading)
    if isinstance(answer, UnitError):
        raise UnitError(*answer.args)
    return answer


@lru_cache(maxsize=4096)
def _cached(unit: str, kind: Kind | str, reading: ReadingType | str) -> float | UnitError:
    try:
        return _factor(unit, kind, reading)
    except UnitError as exc:
        return exc


def _factor(unit: str, kind: Kind | str, reading: ReadingType | str) -> float:
    kind = Kind(kind)
    reading = ReadingType(reading)
    target = canonical_unit(kind, reading)
    if not isinstance(unit, str) or not unit.strip() or len(unit) > 40:
        raise UnitError(f"unit {unit!r} is not a unit")
    try:
        source = _ureg.Quantity(1.0, _normalise(unit))
    except Exception as exc:  # pint raises several error types for bad text
        raise UnitError(f"unknown unit {unit!r}") from exc
    try:
        factor = float(source.to(_normalise(target)).magnitude)
    except pint.DimensionalityError:
        what = "a rate of " if reading == ReadingType.rate else ""
        raise UnitError(
            f"unit {unit!r} does not convert to {what}{kind.value} ({target})"
        ) from None
    except Exception as exc:  # pint's own assertions on odd units ("m3dB") among them
        raise UnitError(f"unit {unit!r} does not convert to {target}") from exc
    if not factor > 0:
        raise UnitError(f"unit {unit!r} has no usable conversion to {target}")
    return factor
