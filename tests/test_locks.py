"""requirements/*.lock against pyproject.toml, without the network.

The lock files are current: each records the fingerprint of the pyproject.toml requirements
it was made from, and every requirement named there is pinned, for every Python the lock
covers, to a version its specifier allows, with hashes.  The three sets nest (runtime ⊂
demo ⊂ dev) with one version per package; the demo set holds none of the tools and tests;
the Makefile installs ``make demo`` and ``make test`` from them and rebuilds the environment
when a lock file changes.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def load_lock_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock", REPO / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = load_lock_script()


def pins(path: Path) -> dict[str, list[tuple[Version, Marker | None, int]]]:
    """``{name: [(version, marker, hashes)]}`` of a lock file (a name is pinned more than
    once when the versions differ between Pythons)."""
    found: dict[str, list[tuple[Version, Marker | None, int]]] = {}
    current: list[tuple[Version, Marker | None, int]] | None = None
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            name, version, marker = match.groups()
            current = found.setdefault(canonicalize_name(name), [])
            current.append((Version(version), Marker(marker) if marker else None, 0))
        elif line.strip().startswith("--hash=sha256:") and current:
            version, marker, hashes = current[-1]
            current[-1] = (version, marker, hashes + 1)
    return found


@pytest.fixture(scope="module")
def locks() -> dict[str, dict[str, list[tuple[Version, Marker | None, int]]]]:
    return {name: pins(lock.lock_path(name)) for name in lock.LOCKS}


def test_lock_files_are_current() -> None:
    assert lock.stale() == [], "pyproject.toml changed since the lock files: run make lock"
    for name, extras in lock.LOCKS.items():
        recorded = lock.recorded_fingerprint(lock.lock_path(name))
        assert recorded == lock.fingerprint(extras), name


def test_fingerprint_follows_the_requirements(tmp_path: Path) -> None:
    """A changed lower bound or a new requirement changes it; layout does not."""
    original = (REPO / "pyproject.toml").read_text()
    changed = tmp_path / "pyproject.toml"

    def fingerprint_of(text: str) -> str:
        changed.write_text(text)
        return str(lock.fingerprint(("embedded", "dev"), changed))

    base = fingerprint_of(original)
    assert fingerprint_of(original.replace('"fastapi>=', '  "fastapi >= ')) == base
    assert fingerprint_of(original.replace('"fastapi>=0.', '"fastapi>=9.')) != base
    assert fingerprint_of(original.replace('"pytest>=', '"pytest-xdist>=1", "pytest>=')) != base


def test_every_requirement_is_pinned_inside_its_bounds(
    locks: dict[str, dict[str, list[tuple[Version, Marker | None, int]]]],
) -> None:
    for name, extras in lock.LOCKS.items():
        pinned = locks[name]
        for text in lock.requirements(extras):
            requirement = Requirement(text)
            entries = pinned.get(canonicalize_name(requirement.name))
            assert entries, f"{name}.lock lacks {requirement.name}"
            for version, _, hashes in entries:
                assert requirement.specifier.contains(version, prereleases=True), (
                    f"{name}.lock pins {requirement.name}=={version}, outside {text!r}"
                )
                assert hashes >= 1, f"{name}.lock: {requirement.name} without hashes"
            # the pin for this interpreter exists (one entry's marker holds here)
            assert any(marker is None or marker.evaluate() for _, marker, _ in entries), text
        for package, entries in pinned.items():
            assert all(hashes >= 1 for _, _, hashes in entries), f"{name}.lock: {package}"


def test_sets_nest_with_one_version_each(
    locks: dict[str, dict[str, list[tuple[Version, Marker | None, int]]]],
) -> None:
    runtime, demo, dev = locks["runtime"], locks["demo"], locks["dev"]
    for smaller, larger in ((runtime, demo), (demo, dev)):
        for package, entries in smaller.items():
            assert larger.get(package) == entries, package
    assert canonicalize_name("pgserver") in demo and canonicalize_name("pgserver") not in runtime
    # the demo installs none of the tools and tests
    for tool in ("pytest", "playwright", "schemathesis", "mypy", "py-spy", "ruff", "hypothesis"):
        assert canonicalize_name(tool) not in demo, tool
        assert canonicalize_name(tool) in dev, tool


def test_makefile_installs_from_the_locks() -> None:
    text = (REPO / "Makefile").read_text()
    rules = dict(re.findall(r"^([^\s:#][^:]*):([^=\n]*)$", text, re.M))
    for stamp, lock_file in (("$(DEMO_STAMP)", "$(DEMO_LOCK)"), ("$(DEV_STAMP)", "$(DEV_LOCK)")):
        # the environment is built again when its lock file (or pyproject.toml) changes
        assert {lock_file, "pyproject.toml"} <= set(rules[stamp].split()), stamp
    assert "DEMO_LOCK := requirements/demo.lock" in text
    assert "DEV_LOCK := requirements/dev.lock" in text
    assert rules["demo"].split() == ["venv"] and rules["venv"].split() == ["$(DEMO_STAMP)"]
    assert "lint" in rules["test"].split() and rules["lint"].split() == ["venv-dev"]
    assert rules["venv-dev"].split() == ["$(DEV_STAMP)"]
    installs = [line.strip() for line in text.splitlines() if "pip install" in line]
    assert "$(BIN)/pip install -q --require-hashes -r $(DEMO_LOCK)" in installs
    assert "$(BIN)/pip install -q --require-hashes -r $(DEV_LOCK)" in installs
    # symbiont itself adds nothing the lock files did not pin
    assert all("-e ." not in line or "--no-deps" in line for line in installs)
    assert not any("[dev" in line or "[embedded" in line for line in installs)
    assert "scripts/lock.py" in text.split("\nlock:", 1)[1].split("\n\n", 1)[0]
