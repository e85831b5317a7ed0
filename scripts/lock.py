"""The lock files of requirements/: write them from pyproject.toml (``make lock``), or say
whether they are current.

Three sets, each resolved for every platform and every Python from 3.11 on, with the hash of
every file pip may download:

- ``runtime.lock``: ``[project] dependencies`` — what the Docker image installs;
- ``demo.lock``: those and the ``embedded`` extra — what ``make demo`` installs;
- ``dev.lock``: those and the ``dev`` extra — what ``make test`` installs.

Each smaller set constrains the next, so a package has the same version in all three.  A
re-run keeps the versions already locked where pyproject.toml still allows them; ``--upgrade``
(``make lock UPGRADE=1``) takes the newest.  Every lock file starts with a fingerprint of the
pyproject.toml requirements it was made from, which ``--check`` (and the tests) compare.

Run with the interpreter of an environment that has uv (``make lock`` installs it).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
DIRECTORY = REPO / "requirements"
# name → the extras it adds; each is constrained by the one before it
LOCKS: dict[str, tuple[str, ...]] = {
    "runtime": (),
    "demo": ("embedded",),
    "dev": ("embedded", "dev"),
}
PYTHON = "3.11"  # the oldest Python symbiont supports: the resolution covers it and above
INDEX = "https://pypi.org/simple"
FINGERPRINT = "# pyproject.toml requirements: sha256 "


def lock_path(name: str) -> Path:
    return DIRECTORY / f"{name}.lock"


def requirements(extras: tuple[str, ...], pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement strings of the project's dependencies and ``extras``, as written."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    found = list(project["dependencies"])
    for extra in extras:
        found += project["optional-dependencies"][extra]
    return found


def fingerprint(extras: tuple[str, ...], pyproject: Path = PYPROJECT) -> str:
    """A hash of the requirements (whitespace and order aside) and ``requires-python``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = sorted(re.sub(r"\s+", "", r).lower() for r in requirements(extras, pyproject))
    lines.append(f"requires-python:{project.get('requires-python', '')}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def recorded_fingerprint(path: Path) -> str | None:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(FINGERPRINT):
            return line.removeprefix(FINGERPRINT).strip()
    return None


def stale() -> list[str]:
    """The lock files that are missing or were made from other requirements."""
    return [
        lock_path(name).name
        for name, extras in LOCKS.items()
        if not lock_path(name).is_file()
        or recorded_fingerprint(lock_path(name)) != fingerprint(extras)
    ]


def compile_lock(
    name: str, extras: tuple[str, ...], constraint: Path | None, upgrade: bool
) -> None:
    out = lock_path(name)
    command = [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "compile",
        str(PYPROJECT.relative_to(REPO)),
        "--universal",
        "--python-version",
        PYTHON,
        "--generate-hashes",
        "--index-url",
        INDEX,
        "--custom-compile-command",
        "make lock",
        "--quiet",
        "-o",
        str(out.relative_to(REPO)),
    ]
    for extra in extras:
        command += ["--extra", extra]
    if constraint is not None:
        command += ["-c", str(constraint.relative_to(REPO))]
    if upgrade:
        command.append("--upgrade")
    subprocess.run(command, cwd=REPO, check=True)
    text = out.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith(FINGERPRINT)]
    # after uv's own two header lines
    lines[2:2] = [f"{FINGERPRINT}{fingerprint(extras)}"]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether they are current")
    parser.add_argument("--upgrade", action="store_true", help="take the newest versions")
    args = parser.parse_args(argv)
    if args.check:
        behind = stale()
        for name in behind:
            print(f"requirements/{name} is not current with pyproject.toml: run make lock")
        return 1 if behind else 0
    DIRECTORY.mkdir(exist_ok=True)
    previous: Path | None = None
    for name, extras in LOCKS.items():
        compile_lock(name, extras, previous, args.upgrade)
        previous = lock_path(name)
        print(f"wrote requirements/{name}.lock")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
