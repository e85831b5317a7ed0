"""The documentation a newcomer reads first holds: the reference pages generated from the code
are current and complete, the README stays a short front page, and every link between the
pages (anchors included) leads somewhere."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from ingest_helpers import symbiont_command
from pydantic import BaseModel

from core import network_docs, settings_docs
from core.network import (
    Balance,
    Exchange,
    Meter,
    Network,
    Partner,
    StatementSettings,
    Terms,
    parse_network,
)
from core.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README = REPO / "README.md"
MODELS: list[type[BaseModel]] = [
    Network,
    Partner,
    Meter,
    Exchange,
    Terms,
    Balance,
    StatementSettings,
]


def test_the_network_file_reference_is_generated_and_current() -> None:
    page = (DOCS / "network-file.md").read_text(encoding="utf-8")
    assert page == network_docs.render(), (
        "docs/network-file.md is stale: python -m core.network_docs"
    )


def test_the_configuration_reference_is_generated_and_current() -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert page == settings_docs.render(), (
        "docs/configuration.md is stale: python -m core.settings_docs"
    )


def test_the_network_reference_names_every_field_and_rule_setting() -> None:
    page = network_docs.render()
    for model in MODELS:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"
            assert f".{info.alias or name}` |" in page or f"| `{name}` |" in page, name
    assert "| `fire_after` | `2` |" in page  # imbalance's default, from the rule's settings
    assert "| `after_s` | — |" in page
    for example in ("examples/small.yaml", "examples/kalundborg.yaml"):
        assert f"[`{example}`](../{example})" in page


def test_the_network_reference_example_is_a_valid_network() -> None:
    net = parse_network(yaml.safe_load(network_docs.EXAMPLE))
    assert [e.id for e in net.exchanges] == ["heat-plant-town"]
    assert net.exchanges[0].rules == {"imbalance": {"z": 4}}


def test_a_field_without_a_description_is_refused() -> None:
    class Undocumented(BaseModel):
        id: str

    with pytest.raises(ValueError, match=r"Undocumented\.id has no Field"):
        network_docs._field_table("x[]", Undocumented)


def test_every_setting_is_documented_with_its_variable() -> None:
    page = settings_docs.render()
    for name, info in Settings.model_fields.items():
        assert info.description, name
        assert f"| `SYMBIONT_{name.upper()}` |" in page
    assert "## Other settings" not in page  # each setting has its place in a section


def test_the_reference_can_be_written_and_checked(tmp_path: Path) -> None:
    out = tmp_path / "network-file.md"
    subprocess.run([*symbiont_command(), "network", "docs", "-o", str(out)], check=True)
    assert out.read_text(encoding="utf-8") == network_docs.render()
    assert network_docs.main(["--out", str(out), "--check"]) == 0
    out.write_text("# an old page\n")
    assert network_docs.main(["--out", str(out), "--check"]) == 1


def test_the_readme_is_a_short_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    quick = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    commands = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert commands is not None
    assert [line.split("#")[0].strip() for line in commands.group(1).splitlines()] == [
        "make demo",
        "make test",
    ]
    assert "](docs/images/dashboard.png)" in text
    assert "](examples/small.yaml)" in text and "](BENCHMARKS.md)" in text
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"](docs/{page.name})" in text, f"the README does not lead to {page.name}"


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_every_link_between_the_pages_leads_somewhere() -> None:
    pages = [README, *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such section)")
    assert broken == []
