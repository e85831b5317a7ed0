"""The token and prune commands: what they print, and how they refuse bad input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from ingest_helpers import symbiont_command

from cli.main import main

REPO = Path(__file__).resolve().parent.parent


def symbiont(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}
    environment.update({"SYMBIONT_DATABASE_URL": database_url, **env})
    return subprocess.run(
        [*symbiont_command(), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_token_commands_and_their_errors(database_url: str) -> None:
    applied = symbiont(database_url, "network", "apply", str(REPO / "examples" / "kalundborg.yaml"))
    assert applied.returncode == 0, applied.stderr

    made = symbiont(database_url, "token", "create", "--role", "partner", "--partner", "novo")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("sym_") and "shown once" in made.stderr

    listed = symbiont(database_url, "token", "list")
    assert listed.returncode == 0 and "partner=novo" in listed.stdout
    assert token.split("_", 2)[2] not in listed.stdout  # never the secret

    cases = {
        ("--role", "partner"): "needs --partner",
        ("--role", "operator", "--partner", "novo"): "only goes with the partner role",
        ("--role", "partner", "--partner", "nobody"): "unknown partner 'nobody'",
    }
    for args, message in cases.items():
        refused = symbiont(database_url, "token", "create", *args)
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    bad_role = symbiont(database_url, "token", "create", "--role", "root")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr

    token_id = token.split("_")[1]
    assert symbiont(database_url, "token", "revoke", token_id).returncode == 0
    again = symbiont(database_url, "token", "revoke", token_id)
    assert again.returncode == 1 and f"no active token with id {token_id}" in again.stderr
    assert "revoked" in symbiont(database_url, "token", "list").stdout


def test_prune_needs_a_retention_and_refuses_a_short_one(database_url: str) -> None:
    unset = symbiont(database_url, "db", "prune")
    assert unset.returncode == 1 and "SYMBIONT_READINGS_RETENTION_DAYS is not set" in unset.stderr
    short = symbiont(database_url, "db", "prune", SYMBIONT_READINGS_RETENTION_DAYS="30")
    assert short.returncode == 2 and "RETENTION_DAYS" in short.stderr
    ok = symbiont(database_url, "db", "prune", SYMBIONT_READINGS_RETENTION_DAYS="500")
    assert ok.returncode == 0 and "dropped 0 reading partitions" in ok.stdout, ok.stderr


def test_a_token_id_too_large_for_the_database_is_refused_clearly(database_url: str) -> None:
    refused = symbiont(database_url, "token", "revoke", "999999999999999999999")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "a token id is a whole number from 1 to 9223372036854775807" in refused.stderr
    largest = symbiont(database_url, "token", "revoke", "9223372036854775807")
    assert largest.returncode == 1 and "no active token with id" in largest.stderr
    assert "Traceback" not in largest.stderr
    month = symbiont(database_url, "statements", "issue", "２０２６-11")
    assert month.returncode == 2 and "bad month '２０２６-11'" in month.stderr, month.stderr


@pytest.mark.parametrize(
    "argv",
    [
        *(
            ["token", "revoke", bad]
            for bad in ("9223372036854775808", "１２", "٣", "0", "-1", "1_000", "+5", " 7")
        ),
        *(
            command
            for bad in (
                "２０２６-11",
                "2026-１１",
                "2026-+1",
                "2026- 1",
                "2026-13",
                "26-11",
                "2026-11\n",
            )
            for command in (["statements", "issue", bad], ["statements", "show", "novo", bad])
        ),
    ],
    ids=" ".join,
)
def test_ids_and_months_are_ascii_digits_in_range(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused by the command line itself (exit 2, the rule named), before any database."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert ("a token id is a whole number" in err) or ("bad month" in err), err
