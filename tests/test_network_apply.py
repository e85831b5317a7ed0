"""Reading and applying the network file: the fast YAML loader gives what ``yaml.safe_load``
gives (and says what it says about a broken file), ``network apply`` writes only what changed
and reports it, and the API reloads the network only when it was applied again."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import yaml

from api.state import NetworkCache
from core.apply import ApplyReport, apply_network, load_applied
from core.db import asyncpg_dsn, create_pool
from core.network import Network, NetworkError, load_network, parse_network
from core.yamlload import _from_events, _Unusual, load_yaml
from rules.topology import build_topology

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
T = TypeVar("T")

# YAML the network file may use beyond plain block mappings: anchors and aliases, merge keys,
# explicit tags, every implicit scalar type of YAML 1.1, quoting and block scalars.
FEATURES = """\
# comment
plain: text
quoted: "a \\"quoted\\" text\\n"
single: 'it''s'
empty:
tilde: ~
null_word: null
bools: [yes, No, true, FALSE, on, off]
ints: [0, -12, 0x1F, 017, 1_000, +7, 0b101, 1:30]
floats: [1.5, -0.25, 1e3, .inf, -.Inf, 6.8523015e+5, 190:20:30.15]
nan: .nan
date: 2026-01-01
stamp: 2026-03-29T01:30:00+01:00
not_a_number: 1.2.3
number_text: "60"
base: &base {price: 20.00, receiver_avoided_cost: 35}
merged:
  <<: *base
  price: 21.50
same: *base
list: &items [a, b, c]
again: *items
tagged: !!str 2026-01-01
set: !!set {a, b}
block: |
  line one
  line two
folded: >
  one
  two
flow: {a: [1, {b: c}], d: 'e'}
"""


def run(work: Callable[[asyncpg.Connection], Awaitable[T]], url: str) -> T:
    async def go() -> T:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0 or True); NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


# ------------------------------------------------------------------------------ the loader


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_loader_gives_the_examples_as_safe_load(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert same(load_yaml(text), yaml.safe_load(text))
    # from libyaml's events, not by falling back to safe_load
    assert same(_from_events(text), yaml.safe_load(text))


def test_events_give_what_safe_load_gives() -> None:
    """The fast path itself, on everything it handles (all but merge keys and tags)."""
    handled = "\n".join(
        line
        for line in FEATURES.splitlines()
        if not line.startswith(("merged:", "  <<:", "  price: 21", "tagged:", "set:"))
    )
    assert same(_from_events(handled), yaml.safe_load(handled))
    with pytest.raises(_Unusual):
        _from_events(FEATURES)


def test_loader_gives_every_yaml_feature_as_safe_load() -> None:
    expected = yaml.safe_load(FEATURES)
    loaded = load_yaml(FEATURES)
    assert same(loaded, expected)
    # the cases that could go wrong, spelled out
    assert loaded["bools"] == [True, False, True, False, True, False]
    assert loaded["ints"] == [0, -12, 31, 15, 1000, 7, 5, 90]
    assert loaded["date"] == date(2026, 1, 1) and loaded["tagged"] == "2026-01-01"
    assert loaded["number_text"] == "60" and loaded["not_a_number"] == "1.2.3"
    assert loaded["merged"] == {"price": 21.5, "receiver_avoided_cost": 35}
    assert loaded["same"] is loaded["base"] and loaded["again"] is loaded["list"]
    assert loaded["empty"] is None and loaded["tilde"] is None


def test_loader_shares_anchored_collections_as_safe_load() -> None:
    text = "a: &x [1, 2]\nb: *x\nc: &y {k: v}\nd: [*y, *y]\n"
    loaded = load_yaml(text)
    assert same(loaded, yaml.safe_load(text))
    assert loaded["b"] is loaded["a"] and loaded["d"][0] is loaded["d"][1] is loaded["c"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "just text",
        "- 1\n- 2\n",
        "a: 1\na: 2\n",  # the last wins, as with safe_load
        "? [a, b]\n: c\n",  # an unhashable key: safe_load refuses it
        "a: 1\n---\nb: 2\n",  # two documents
        "a: &x 1\nb: &x 2\n",  # an anchor defined twice
        "a: *nowhere\n",
        "a: [1, 2\nb: 3\n",
        "a: b: c\n",
        "key: 'unterminated\n",
        "a:\n  - 1\n   - 2\n",
        "a: !!python/object:os.system x\n",
        "a: !unknown x\n",
        "a: \x07\n",
        "meters:\n  - id: x\n\tkind: heat\n",
    ],
)
def test_loader_says_what_safe_load_says(text: str) -> None:
    """A valid document comes back the same; for a broken one the same error, word for word
    (the line and column included)."""
    try:
        expected: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        with pytest.raises(yaml.YAMLError) as raised:
            load_yaml(text)
        assert type(raised.value) is type(exc)
        assert str(raised.value) == str(exc)
    else:
        assert same(load_yaml(text), expected)


def test_broken_network_file_names_the_line(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "small.yaml").read_text(encoding="utf-8")
    broken = text.replace("    unit: kWh\n", "    unit: [kWh\n", 1)
    path = tmp_path / "network.yaml"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(NetworkError) as raised:
        load_network(path)
    try:
        yaml.safe_load(broken)
    except yaml.YAMLError as exc:
        expected = f"{path}: not valid YAML: {exc}"
    assert raised.value.problems == [expected]
    line = broken[: broken.index("[kWh")].count("\n") + 1
    assert f"line {line}," in expected or f"line {line + 1}," in expected


def test_validation_errors_name_the_path(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "small.yaml").read_text(encoding="utf-8")
    path = tmp_path / "network.yaml"
    path.write_text(
        text.replace("received: [town-heat-in]", "received: [town-heat-in, ghost]", 1).replace(
            "uncertainty: 0.018", "uncertainty: 2", 1
        ),
        encoding="utf-8",
    )
    with pytest.raises(NetworkError) as raised:
        load_network(path)
    assert raised.value.problems == [
        "meters[1].uncertainty: Input should be less than or equal to 1"
    ]
    path.write_text(
        text.replace("received: [town-heat-in]", "received: [town-heat-in, ghost]", 1),
        encoding="utf-8",
    )
    with pytest.raises(NetworkError) as raised:
        load_network(path)
    assert raised.value.problems == ["exchanges[0].received[1]: unknown meter 'ghost'"]


# ------------------------------------------------------------------------------- applying


def small() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "small.yaml").read_text())
    return doc


async def rows(conn: asyncpg.Connection, table: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: dict(r) for r in await conn.fetch(f"SELECT * FROM {table}")}


async def links(conn: asyncpg.Connection) -> set[tuple[Any, ...]]:
    em = await conn.fetch("SELECT exchange_id, meter_id, side FROM exchange_meters")
    bm = await conn.fetch("SELECT balance_id, meter_id, side FROM balance_meters")
    terms = await conn.fetch("SELECT exchange_id, valid_from, price FROM terms")
    return {("x", *r) for r in em} | {("b", *r) for r in bm} | {("t", *r) for r in terms}


def expected_links(net: Network) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()
    for e in net.exchanges:
        out |= {("x", e.id, m, "sent") for m in e.sent}
        out |= {("x", e.id, m, "received") for m in e.received}
        out |= {("t", e.id, t.from_, t.price) for t in e.terms}
    for b in net.balances:
        out |= {("b", b.id, m, "in") for m in b.in_} | {("b", b.id, m, "out") for m in b.out}
    return out


def test_apply_writes_what_changed_and_says_so(database_url: str) -> None:
    first = parse_network(small())
    doc = small()
    # a meter watched for alerts only, in the first version only
    doc["meters"].append({**copy.deepcopy(doc["meters"][0]), "id": "plant-spare"})
    del doc["meters"][-1]["sparkplug"]
    with_spare = parse_network(doc)

    changed_doc = copy.deepcopy(doc)
    changed_doc["meters"] = [m for m in changed_doc["meters"] if m["id"] != "plant-spare"]
    changed_doc["meters"][1]["uncertainty"] = 0.02  # town-heat-in
    changed_doc["exchanges"][0]["terms"][0]["price"] = "29.00"  # heat-plant-town
    changed_doc["partners"].append({"id": "port", "name": "Port Authority"})
    changed = parse_network(changed_doc)

    async def work(conn: asyncpg.Connection) -> None:
        report = await apply_network(conn, with_spare)
        n = {s: len(getattr(with_spare, s)) for s in ("partners", "meters", "exchanges")}
        assert report.added == {**n, "balances": len(with_spare.balances)}
        assert report.summary().startswith(
            f"added {n['partners']} partners, {n['meters']} meters, {n['exchanges']} exchanges"
        )
        assert await load_applied(conn) == with_spare
        meters = await rows(conn, "meters")
        assert set(meters) == {m.id for m in with_spare.meters}
        assert await links(conn) == expected_links(with_spare)
        applied_at = await conn.fetchval("SELECT applied_at FROM network")

        # the same file again: nothing written, not even the time it was applied
        again = await apply_network(conn, with_spare)
        assert again.unchanged and again.summary() == "no changes"
        assert await conn.fetchval("SELECT applied_at FROM network") == applied_at
        assert await rows(conn, "meters") == meters

        # one meter removed, one changed, a partner added, terms changed
        report = await apply_network(conn, changed)
        assert report.summary() == (
            "added 1 partners; changed 1 meters, 1 exchanges; removed 1 meters"
        )
        after = await rows(conn, "meters")
        assert after["plant-spare"]["retired_at"] is not None
        assert after["town-heat-in"]["uncertainty"] == 0.02
        assert after["town-heat-in"]["updated_at"] > meters["town-heat-in"]["updated_at"]
        untouched = {m for m in after if m not in ("plant-spare", "town-heat-in")}
        assert untouched and all(after[m] == meters[m] for m in untouched)
        assert (await rows(conn, "partners"))["port"]["retired_at"] is None
        assert await links(conn) == expected_links(changed)
        assert await conn.fetchval("SELECT applied_at FROM network") > applied_at
        assert await load_applied(conn) == changed

        # the meter back: added again, no longer retired, its history row the same
        report = await apply_network(conn, with_spare)
        assert report.summary() == (
            "added 1 meters; changed 1 meters, 1 exchanges; removed 1 partners"
        )
        back = await rows(conn, "meters")
        assert back["plant-spare"]["retired_at"] is None
        assert (await rows(conn, "partners"))["port"]["retired_at"] is not None
        assert await links(conn) == expected_links(with_spare)

        # only the network's own settings
        renamed = parse_network({**doc, "name": "Renamed"})
        assert (await apply_network(conn, renamed)).summary() == "changed the network's settings"
        assert await rows(conn, "meters") == back

        # a meter's rule settings count as a change of the meter
        ruled = parse_network(
            {
                **doc,
                "name": "Renamed",
                "meter_rules": {"town-heat-in": {"meter_stale": {"intervals": 5}}},
            }
        )
        assert (await apply_network(conn, ruled)).summary() == "changed 1 meters"
        assert (await rows(conn, "meters"))["town-heat-in"]["rules"] == (
            '{"meter_stale": {"intervals": 5}}'
        )

        # the first network: the spare meter retired once more
        await apply_network(conn, first)
        assert (await rows(conn, "meters"))["plant-spare"]["retired_at"] is not None

    run(work, database_url)


def test_report_summary() -> None:
    report = ApplyReport(added={"meters": 2, "partners": 0}, removed={"exchanges": 1})
    assert report.summary() == "added 2 meters; removed 1 exchanges"
    assert ApplyReport(unchanged=True).summary() == "no changes"


def test_api_reloads_the_network_only_when_it_was_applied_again(database_url: str) -> None:
    doc = small()

    async def work() -> None:
        pool = await create_pool(database_url, application_name="symbiont-tests")
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await apply_network(conn, parse_network(doc))
            cache = NetworkCache(ttl_s=0.0)
            net = await cache.get(pool)
            assert cache.loads == 1
            for _ in range(3):
                cache.invalidate()
                assert await cache.get(pool) is net
            assert cache.loads == 1
            await apply_network(conn, parse_network({**doc, "name": "Renamed"}))
            cache.invalidate()
            assert (await cache.get(pool)).name == "Renamed"
            assert cache.loads == 2
        finally:
            await conn.close()
            await pool.close()

    asyncio.run(work())


def test_topology_components_of_a_bigger_network(tmp_path: Path) -> None:
    """Components (balances with the exchanges that touch them) found in one pass come out
    as when each group looked through every balance and exchange."""
    from benchmarks.network_scale import network_file

    def reference(net: Network) -> dict[str, tuple[list[str], list[str]]]:
        topo = build_topology(net)
        out = {}
        for cid, comp in topo.components.items():
            members = set(comp.meters)
            balances = [b.id for b in net.balances if set(b.in_) & members]
            exchanges = [e.id for e in net.exchanges if set(e.sent) & members]
            out[cid] = (balances, exchanges)
        return out

    file = tmp_path / "network.yaml"
    network_file(file, 3_000, 40, 30)
    net = load_network(file)
    topo = build_topology(net)
    assert len(topo.components) == 30
    ref = reference(net)
    for cid, comp in topo.components.items():
        balances, exchanges = ref[cid]
        assert [c.id for c in comp.constraints] == balances + exchanges
        assert all(topo.component_of[m] == cid for m in comp.meters)
