"""Fixtures for real services: Mosquitto brokers and PostgreSQL databases, never mocks.

- ``mosquitto``: one broker for the session; don't stop, restart or kill it.
- ``fresh_mosquitto``: a broker of the test's own, to restart or kill at will.
- ``database_url``: a new migrated database on the system PostgreSQL, dropped afterwards.
- ``private_postgres``: a private cluster for the session, for tests that stop PostgreSQL.
- ``private_database_url``: a new migrated database on ``private_postgres`` (restarted first
  if an earlier test left it stopped).

The system server is ``$SYMBIONT_TEST_DATABASE_URL`` or postgres@127.0.0.1:5432.  A missing
service fails the tests that need it, with the reason; nothing is skipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_system import ApiSystem
from api_system import build as build_api_system
from ingest_helpers import stop_leftover_services
from playwright.sync_api import Browser, sync_playwright
from services import (
    SYSTEM_POSTGRES_URL_ENV,
    Mosquitto,
    PrivatePostgres,
    ServiceError,
    create_database,
    create_migrated_template,
    drop_database,
    postgres_reachable,
    system_postgres_url,
)
from sqlalchemy.engine import make_url


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def _start_mosquitto() -> Mosquitto:
    try:
        broker = Mosquitto()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        broker.start()
    except ServiceError as exc:
        broker.close()
        pytest.fail(str(exc), pytrace=False)
    return broker


@pytest.fixture(scope="session", autouse=True)
def _no_service_outlives_the_run() -> Iterator[None]:
    yield
    stop_leftover_services()


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A broker shared by the session; tests that restart or kill one use fresh_mosquitto."""
    with _start_mosquitto() as broker:
        yield broker


@pytest.fixture
def fresh_mosquitto() -> Iterator[Mosquitto]:
    """A broker of the test's own, free to be stopped, killed and restarted."""
    with _start_mosquitto() as broker:
        yield broker


def _migrated_template(admin_url: str) -> str:
    name = unique_name("symbiont_tmpl")
    try:
        create_migrated_template(admin_url, name)
    except Exception as exc:
        pytest.fail(
            f"could not create a migrated database on {_safe(admin_url)}"
            f" (core.db.upgrade failed; see migrations/): {type(exc).__name__}: {exc}",
            pytrace=False,
        )
    return name


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """A superuser URL on the system PostgreSQL, checked to be reachable."""
    url = system_postgres_url()
    problem = postgres_reachable(url)
    if problem is not None:
        pytest.fail(
            f"PostgreSQL is not reachable at {_safe(url)} ({problem}). Tests need a running server"
            f" with trust auth for the postgres user; set {SYSTEM_POSTGRES_URL_ENV} to use"
            " another one.",
            pytrace=False,
        )
    return url


@pytest.fixture(scope="session")
def database_template(postgres_admin_url: str) -> Iterator[str]:
    """Name of a migrated template database on the system server, for this session only."""
    name = _migrated_template(postgres_admin_url)
    yield name
    drop_database(postgres_admin_url, name)


@pytest.fixture
def database_url(postgres_admin_url: str, database_template: str) -> Iterator[str]:
    """URL of a new, migrated, empty database ``symbiont_test_*``; dropped after the test."""
    name = unique_name("symbiont_test")
    url = create_database(postgres_admin_url, name, template=database_template)
    yield url
    drop_database(postgres_admin_url, name)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster; tests may stop and restart it (leave it running)."""
    try:
        cluster = PrivatePostgres()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def private_database_template(private_postgres: PrivatePostgres) -> str:
    """Name of a migrated template database on ``private_postgres``."""
    if not private_postgres.running:
        private_postgres.start()
    return _migrated_template(private_postgres.url())


@pytest.fixture
def private_database_url(
    private_postgres: PrivatePostgres, private_database_template: str
) -> Iterator[str]:
    """URL of a new migrated database on ``private_postgres``; dropped after the test."""
    if not private_postgres.running:
        private_postgres.start()
    name = unique_name("symbiont_test")
    url = private_postgres.create_database(name, template=private_database_template)
    yield url
    if not private_postgres.running:
        private_postgres.start()
    drop_database(private_postgres.url(), name)


@pytest.fixture(scope="module")
def api_system(postgres_admin_url: str, database_template: str) -> Iterator[ApiSystem]:
    """The API served on a free port over two simulated days of the example network, with a
    25 % leak on ``api_system.LEAKING`` and tokens for every role (see tests/api_system.py).
    Shared by a module's tests: don't change what others rely on."""
    name = unique_name("symbiont_api")
    url = create_database(postgres_admin_url, name, template=database_template)
    system = build_api_system(url)
    system.serve()
    try:
        yield system
    finally:
        system.stop()
        drop_database(postgres_admin_url, name)


CHROMIUM_ENV = "SYMBIONT_TEST_CHROMIUM"


def chromium_path() -> str:
    """The dashboard tests' browser: Debian's Chromium, or the one $SYMBIONT_TEST_CHROMIUM names."""
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(
            f"Chromium not found at {path}: install Debian's chromium package"
            f" (apt-get install chromium) or set {CHROMIUM_ENV}",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module (each test opens contexts of its own)."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
