"""Real services for tests and benchmarks: a private Mosquitto, a private PostgreSQL cluster,
and throwaway databases on an existing server.  No pytest here, so benchmarks can import it.

Nothing is mocked: ``Mosquitto`` runs the system ``mosquitto`` binary with persistence on,
``PrivatePostgres`` runs ``initdb``/``pg_ctl`` from the system PostgreSQL installation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from sqlalchemy.engine import make_url

from core.db import connect, upgrade

DEFAULT_SYSTEM_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEM_POSTGRES_URL_ENV = "SYMBIONT_TEST_DATABASE_URL"
MOSQUITTO_ENV = "SYMBIONT_MOSQUITTO"  # path to the mosquitto binary, if not on PATH
PG_BINDIR_ENV = "SYMBIONT_PG_BINDIR"  # directory holding initdb and pg_ctl, if not found
LOCALHOST = "127.0.0.1"

# Where distributions put daemons that are not on an unprivileged user's PATH.
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class ServiceError(RuntimeError):
    """A test service could not be found, started or stopped; the message says why."""


# --------------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts TCP connections; ``TimeoutError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing accepts connections on {host}:{port} after {timeout}s")
        time.sleep(0.02)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ----------------------------------------------------------------------------- mosquitto


def find_mosquitto() -> str:
    """The mosquitto binary: ``$SYMBIONT_MOSQUITTO``, else PATH, else the usual sbin dirs."""
    configured = os.environ.get(MOSQUITTO_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            raise ServiceError(f"{MOSQUITTO_ENV}={configured} is not an executable")
        return configured
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    found = shutil.which("mosquitto", path=search)
    if found is None:
        raise ServiceError(
            "the mosquitto broker is not installed (Debian/Ubuntu: apt-get install mosquitto;"
            f" or set {MOSQUITTO_ENV} to its path)"
        )
    return found


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Mosquitto:
    """A private Mosquitto broker on 127.0.0.1, persistent across ``restart()``.

    Configured so that nothing is dropped silently: unlimited queue for offline or slow
    persistent sessions (the default drops QoS 1/2 messages beyond 1000 per client),
    unlimited in-flight window for MQTT 3.1.1 clients (v5 clients set ``ReceiveMaximum``),
    sessions never expire, and the in-memory database is saved every ``autosave_interval``
    seconds as well as on ``stop()``.  ``extra_config`` lines (password_file, acl_file, ...)
    are appended on every ``start()``; files they name can be put in ``self.dir`` first.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        allow_anonymous: bool = True,
        extra_config: Iterable[str] = (),
        autosave_interval: int = 1,
        binary: str | None = None,
        listeners: Iterable[tuple[int, Sequence[str]]] = (),
    ) -> None:
        self.binary = binary or find_mosquitto()
        self.host = LOCALHOST
        # Listeners of a configuration file (``from_config``): each on a free port of
        # 127.0.0.1 with its own lines (TLS files, client authentication), ``ports`` mapping
        # the file's port to ours.  Without any, one plain listener on ``port``.
        self.listeners = [(original, list(lines)) for original, lines in listeners]
        self.ports = {original: free_port() for original, _ in self.listeners}
        if self.listeners:
            port = port or self.ports[self.listeners[0][0]]
            self.ports[self.listeners[0][0]] = port
        self.port = port or free_port()
        self.allow_anonymous = allow_anonymous
        self.extra_config: list[str] = list(extra_config)
        self.autosave_interval = autosave_interval
        self.dir = Path(tempfile.mkdtemp(prefix="symbiont-mosquitto-"))
        self.conf_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.stderr_path = self.dir / "stderr.log"
        self.persistence_path = self.dir / "mosquitto.db"
        self._proc: subprocess.Popen[bytes] | None = None
        # Shared with the finalizer, which kills a broker left running when we are collected
        # or the interpreter exits.
        self._procs: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, Mosquitto._cleanup, self._procs, self.dir)

    @staticmethod
    def _cleanup(procs: list[subprocess.Popen[bytes]], directory: Path) -> None:
        for proc in procs:
            _stop_process(proc, signal.SIGKILL, 5)
        shutil.rmtree(directory, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def config_text(self) -> str:
        lines = [
            *([] if self.listeners else [f"listener {self.port} {self.host}"]),
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            # Mosquitto concatenates location and file name: the trailing slash matters.
            f"persistence_location {self.dir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_interval}",
            "autosave_on_changes false",
            # 0 = no limit.  The defaults (1000 messages, 20 in flight) drop QoS 1 messages
            # for an offline persistent session once its queue is full.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            "max_inflight_bytes 0",
            # persistent_client_expiration is deliberately unset: sessions never expire.
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root Mosquitto otherwise switches to the `mosquitto` user, which cannot write
            # the persistence file (or the log) into our root-owned temp dir.
            lines.append("user root")
        for original, options in self.listeners:
            lines += [f"listener {self.ports[original]} {self.host}", *options]
        return "\n".join([*lines, *self.extra_config, ""])

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            raise ServiceError(f"mosquitto is already running on port {self.port}")
        self.conf_path.write_text(self.config_text())
        with self.stderr_path.open("ab") as stderr:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.dir,
                # Not in the test runner's process group: a Ctrl-C reaches pytest, whose
                # teardown then stops the broker cleanly.
                start_new_session=True,
            )
        self._procs[:] = [self._proc]
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise ServiceError(
                    f"mosquitto exited with status {code} on start (port {self.port}):\n"
                    f"{_tail(self.stderr_path)}\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s:\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: Mosquitto saves its persistence file before exiting."""
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGTERM, timeout)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL: whatever changed since the last autosave is lost, as in a crash."""
        if self._proc is not None:
            _stop_process(self._proc, signal.SIGKILL, 5)
            self._proc = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port with the same persistence file."""
        self.stop(timeout)
        self.start(timeout)

    def save(self) -> None:
        """Ask the running broker to write its persistence file now (SIGUSR1)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Kill the broker if still running and delete its directory."""
        self.stop()
        self._finalizer()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Mosquitto({self.url}, running={self.running}, dir={self.dir})"

    # Lines of a generated configuration that name a place on the broker's host: the test
    # broker puts its own listener, persistence and log there instead.
    _HOST_SPECIFIC = ("listener", "persistence_location", "persistence_file", "log_dest", "user")

    @classmethod
    def from_config(cls, conf_path: Path, *, port: int | None = None) -> Mosquitto:
        """A broker (not started) that runs ``conf_path`` — e.g. the ``mosquitto.conf`` of
        ``symbiont broker-config --broker-dir DIR`` — on free ports of 127.0.0.1.

        Every setting of the file is kept (authentication, ACL, queue limits, each listener's
        TLS options; later lines override the harness's defaults) except where it listens,
        persists and logs.  Each listener of the file gets a port of its own (``ports`` maps
        the file's port to it; ``port``, the first listener's, may be chosen).
        """
        extra: list[str] = []
        listeners: list[tuple[int, list[str]]] = []
        allow_anonymous = True
        for raw in conf_path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition(" ")
            if key == "allow_anonymous":
                allow_anonymous = value.strip() == "true"
            elif key == "listener":
                listeners.append((int(value.split()[0]), []))
            elif key in cls._HOST_SPECIFIC:
                continue
            elif listeners:
                listeners[-1][1].append(line)
            else:
                extra.append(line)
        return cls(
            port=port, allow_anonymous=allow_anonymous, extra_config=extra, listeners=listeners
        )


# ---------------------------------------------------------------------------- postgresql


def system_postgres_url() -> str:
    """The server tests create their databases on: ``$SYMBIONT_TEST_DATABASE_URL`` or local."""
    return os.environ.get(SYSTEM_POSTGRES_URL_ENV) or DEFAULT_SYSTEM_POSTGRES_URL


def _version_key(path: Path) -> tuple[int, ...]:
    parts = path.parent.name.split(".")
    return tuple(int(p) for p in parts if p.isdigit())


def find_pg_bindir() -> Path:
    """The directory with ``initdb`` and ``pg_ctl``.

    ``$SYMBIONT_PG_BINDIR``, else ``initdb`` on PATH (most distributions), else
    ``pg_config --bindir``, else the newest ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu).
    """
    candidates: list[Path] = []
    configured = os.environ.get(PG_BINDIR_ENV)
    if configured:
        candidates.append(Path(configured))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    )
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise ServiceError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install the postgresql package"
        f" or set {PG_BINDIR_ENV} (looked in: {', '.join(map(str, candidates)) or 'nothing'})"
    )


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def database_url(server_url: str, name: str) -> str:
    """``server_url`` with its database replaced by ``name``."""
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def _execute(admin_url: str, *statements: str) -> None:
    conn = await asyncio.wait_for(connect(admin_url, application_name="symbiont-tests"), timeout=15)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def execute(url: str, *statements: str) -> None:
    """Run ``statements`` in one session on ``url``, each in its own implicit transaction."""
    asyncio.run(_execute(url, *statements))


def create_database(admin_url: str, name: str, *, template: str | None = "template0") -> str:
    """Create database ``name`` on the server of ``admin_url``; returns its URL.

    ``template0`` by default: unlike ``template1`` it cannot be busy with someone else's
    session, which would make ``CREATE DATABASE`` fail.
    """
    statement = f"CREATE DATABASE {_quote_ident(name)}"
    if template is not None:
        statement += f" TEMPLATE {_quote_ident(template)}"
    execute(admin_url, statement)
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop ``name`` if it exists, disconnecting its sessions (PostgreSQL 13+)."""

    async def drop() -> None:
        conn = await asyncio.wait_for(
            connect(admin_url, application_name="symbiont-tests"), timeout=15
        )
        try:
            is_template = await conn.fetchval(
                "SELECT datistemplate FROM pg_database WHERE datname = $1", name
            )
            if is_template:
                await conn.execute(f"ALTER DATABASE {_quote_ident(name)} IS_TEMPLATE false")
            await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
        finally:
            await conn.close()

    asyncio.run(drop())


def create_migrated_template(admin_url: str, name: str) -> str:
    """Create ``name``, run the migrations on it and make it a template; returns its URL.

    ``CREATE DATABASE x TEMPLATE name`` then gives a migrated database in a fraction of the
    time the migrations take.  Connections to the template are refused afterwards, since
    ``CREATE DATABASE`` fails while anyone is connected to its template.  If the migrations
    fail the database is dropped and the exception propagates.
    """
    url = create_database(admin_url, name)
    try:
        upgrade(url)
        ident = _quote_ident(name)
        execute(
            admin_url,
            f"ALTER DATABASE {ident} IS_TEMPLATE true",
            f"ALTER DATABASE {ident} ALLOW_CONNECTIONS false",
        )
    except BaseException:
        drop_database(admin_url, name)
        raise
    return url


def postgres_reachable(url: str, timeout: float = 5.0) -> str | None:
    """``None`` if a session can be opened on ``url``, else the reason it cannot."""

    async def probe() -> None:
        conn = await asyncio.wait_for(
            connect(url, application_name="symbiont-tests"), timeout=timeout
        )
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _as_postgres_user() -> list[str]:
    """Command prefix that runs a program as the ``postgres`` OS user when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which(
        "runuser", path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    )
    if runuser:
        return [runuser, "-u", "postgres", "--"]
    raise ServiceError("running as root but `runuser` (util-linux) is missing")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster in a temp dir, on 127.0.0.1 and a free port.

    Trust authentication for ``postgres``; ``fsync=off`` (a clean or immediate shutdown
    loses nothing, only an OS crash would).  As root, runs as the ``postgres`` OS user.
    """

    def __init__(self, *, port: int | None = None, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_pg_bindir()
        self.host = LOCALHOST
        self.port = port or free_port()
        self._prefix = _as_postgres_user()
        base = None
        if self._prefix:
            # The postgres user must be able to reach the directory: /tmp is world-searchable,
            # a root-only $TMPDIR might not be.
            base = "/tmp" if Path("/tmp").is_dir() else None
        self.dir = Path(tempfile.mkdtemp(prefix="symbiont-pg-", dir=base))
        self.data_dir = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.log_path = self.dir / "postgres.log"
        self.socket_dir.mkdir()
        if self._prefix:
            for path in (self.dir, self.socket_dir):
                shutil.chown(path, "postgres", "postgres")
        # Shared with the finalizer, which stops a cluster left running when we are collected
        # or the interpreter exits.
        self._state = {"running": False}
        pg_ctl = [*self._prefix, *self._pg_ctl()]
        self._finalizer = weakref.finalize(
            self, PrivatePostgres._cleanup, self._state, pg_ctl, self.dir
        )

    def _pg_ctl(self, *args: str) -> list[str]:
        return [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args]

    @staticmethod
    def _cleanup(state: dict[str, bool], pg_ctl: list[str], directory: Path) -> None:
        if state["running"]:
            subprocess.run(
                [*pg_ctl, "stop", "-m", "immediate", "-w"],
                cwd=directory,
                capture_output=True,
                check=False,
            )
        shutil.rmtree(directory, ignore_errors=True)

    def _run(self, args: Sequence[str], what: str) -> None:
        result = subprocess.run(
            [*self._prefix, *args], cwd=self.dir, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ServiceError(
                f"{what} failed ({result.returncode}): {result.stderr.strip()}\n"
                f"{result.stdout.strip()}\n{_tail(self.log_path)}"
            )

    @property
    def running(self) -> bool:
        return self._state["running"]

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def _initdb(self) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            "initdb",
        )
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "timezone": "'UTC'",
            "log_min_messages": "warning",
        }
        conf = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with (self.data_dir / "postgresql.conf").open("a") as handle:
            handle.write("\n# symbiont test cluster\n" + conf)

    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            raise ServiceError(f"postgres is already running on port {self.port}")
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._run(
            self._pg_ctl("start", "-w", "-t", str(int(timeout)), "-l", str(self.log_path)),
            "pg_ctl start",
        )
        self._state["running"] = True
        wait_port(self.host, self.port, timeout)

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """``pg_ctl stop -m mode``: ``smart``, ``fast`` or ``immediate`` (a crash)."""
        if not self.running:
            return
        self._run(
            self._pg_ctl("stop", "-m", mode, "-w", "-t", str(int(timeout))),
            f"pg_ctl stop -m {mode}",
        )
        self._state["running"] = False

    def restart(self, mode: str = "fast") -> None:
        """Stop and start on the same port and data directory."""
        self.stop(mode)
        self.start()

    def create_database(self, name: str, *, template: str | None = "template0") -> str:
        return create_database(self.url(), name, template=template)

    def drop_database(self, name: str) -> None:
        drop_database(self.url(), name)

    def close(self) -> None:
        """Stop the cluster if running and delete its directory."""
        with contextlib.suppress(ServiceError):
            self.stop("fast")
        self._finalizer()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrivatePostgres({self.url()}, running={self.running}, dir={self.dir})"
