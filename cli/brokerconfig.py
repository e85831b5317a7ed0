"""``symbiont broker-config FILE --out DIR``: Mosquitto users, passwords and ACL for a network.

Every partner of the network file gets a broker user named by its partner id; three service
users are added: ``symbiont-ingest``, ``symbiont-rules`` and ``symbiont-monitor``.  Four files
are written to DIR (created if missing), each replaced atomically:

``mosquitto.conf`` (0644)
    A complete Mosquitto 2 configuration: ``listener 1883``, ``allow_anonymous false``,
    ``password_file`` and ``acl_file`` (``--broker-dir``, default ``/mosquitto/config``: where
    the broker sees DIR), persistence in ``--data-dir`` (default ``/mosquitto/data``) and the
    queue limits of :func:`cli.broker.broker_settings` (``max_queued_messages 0`` …: no QoS 1
    message is dropped for a slow or offline ingest session), ``log_dest stdout``.

``passwd`` (0644)
    Mosquitto's password file, one ``user:$7$<iterations>$<salt>$<hash>`` line per user, sorted
    by user: ``$7$`` is PBKDF2-HMAC-SHA512, ``salt`` 12 random bytes and ``hash`` the 64-byte
    derived key, both standard base64 with padding (what ``mosquitto_passwd`` writes).  Only
    salted hashes of random secrets: readable by the broker's own user inside a container.
    A user whose password is unchanged keeps its line, so a re-run rewrites identical bytes.

``acl`` (0644)
    Mosquitto's ACL file: one ``user NAME`` block per user with ``topic read|write TOPIC``
    lines; nothing for anonymous clients (they are refused anyway).

    - partner P: ``write symbiont/readings/P/#``; ``read symbiont/statements/P``; ``read
      symbiont/alerts/S`` for S = P itself, each of P's meters and each exchange P provides or
      receives (alert subjects are exchanges, meters and partners). For each Sparkplug B edge
      node N of group G all of whose mapped meters are P's: ``write spBv1.0/G/+/N`` and
      ``write spBv1.0/G/+/N/+`` (its births, data and deaths, its devices') and ``read
      spBv1.0/G/NCMD/N`` (rebirth requests). A node mapped to meters of several partners is
      granted to none of them (a warning says so): any of them could speak for the others.
    - ``symbiont-ingest``: ``read symbiont/readings/#``, ``read spBv1.0/#`` and ``write
      spBv1.0/+/NCMD/+`` (rebirth requests to edge nodes).  Mosquitto 2.0 grants any
      subscription filter (its shared subscription ``$share/symbiont/symbiont/readings/#``
      too) and checks every message it would deliver, retained or not, against the user's
      read grants; a refused publish gets PUBACK 0x87 over MQTT 5 (nothing over 3.1.1), after
      which Mosquitto closes the client's connection.
    - ``symbiont-rules``: ``write symbiont/alerts/#`` and ``write symbiont/statements/#``.
    - ``symbiont-monitor`` (operators, dashboards, debugging with ``mosquitto_sub``): ``read
      symbiont/#``, ``read spBv1.0/#`` and ``read $SYS/#``; it cannot publish.

``credentials.env`` (0600)
    The clear-text passwords, one ``SYMBIONT_MQTT_PASSWORD_<USER>=<password>`` line per user
    (``<USER>`` is the user name upper-cased with ``-`` as ``_``; user names never contain
    ``_``, so the mapping reverses), sorted, after ``#`` comment lines.  It is both a shell
    file (``set -a; . DIR/credentials.env``) and a ``docker compose --env-file``.  Passwords
    are ``secrets.token_urlsafe(24)`` (32 characters of ``[A-Za-z0-9_-]``, safe unquoted in an
    env file and in the user-info of an ``mqtt://`` URL).  A password already present for a
    user is kept (edit the file and re-run to set one); a user no longer in the network loses
    its line and its broker account.

With ``--tls`` (or any TLS option; a re-run keeps what the previous one chose) the broker gets
a TLS listener (``--tls-port``, default 8883) with the park CA's certificate or the operator's
own (``--cert``/``--key``/``--ca``), and the plain listener is bound to 127.0.0.1 only
(``--plain-listener``).  Clients sign in with their password over TLS (``--client-auth
password``), or present a client certificate of the park CA whose common name is their user
(``--client-auth certificate``: ``use_identity_as_username``).  The certificates and keys are
written to ``tls/`` and ``clients/`` by :mod:`cli.brokertls`, which says which file is what.

A partner id equal to a service user's name is an error, reported like every other problem of
the network file (:class:`core.network.NetworkError`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cli.broker import broker_settings
from cli.brokertls import (
    CLIENT_AUTH,
    DEFAULT_TLS_PORT,
    PLAIN_LISTENER,
    TlsError,
    TlsOptions,
    TlsResult,
    listener_lines,
    previous_options,
    write_tls,
)
from core.network import Network, NetworkError, load_network

INGEST_USER = "symbiont-ingest"
RULES_USER = "symbiont-rules"
MONITOR_USER = "symbiont-monitor"
SERVICE_USERS = (INGEST_USER, RULES_USER, MONITOR_USER)

CONF_FILE = "mosquitto.conf"
PASSWD_FILE = "passwd"  # noqa: S105 (a file name)
ACL_FILE = "acl"
CREDENTIALS_FILE = "credentials.env"

DEFAULT_BROKER_DIR = "/mosquitto/config"  # the eclipse-mosquitto image's config directory
DEFAULT_DATA_DIR = "/mosquitto/data"
DEFAULT_PORT = 1883

PASSWORD_VARIABLE_PREFIX = "SYMBIONT_MQTT_PASSWORD_"  # noqa: S105 (a variable name)
# mosquitto_passwd's defaults (Mosquitto 2.0): PBKDF2-SHA512, 101 iterations, 12-byte salt.
# The count matters little here: the passwords are 192-bit random secrets, not guessable
# words, and the broker pays the iterations on every CONNECT.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
_HASH_RE = re.compile(r"^\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
# Characters a password may not contain: they would need quoting in an env file or a shell.
_UNSAFE_PASSWORD_RE = re.compile(r"[\s\"'`$\\#]")


@dataclass(frozen=True)
class User:
    """A broker user and what it may do: ``(access, topic)`` with access ``read``/``write``."""

    name: str
    role: str  # "partner" | "service"
    grants: tuple[tuple[str, str], ...]
    note: str = ""


@dataclass
class Result:
    out: Path
    users: list[str]
    created: list[str] = field(default_factory=list)  # users given a new password
    removed: list[str] = field(default_factory=list)  # users in the old credentials, gone now
    warnings: list[str] = field(default_factory=list)
    tls: TlsResult | None = None

    def summary(self) -> str:
        parts = [
            f"{len(self.users)} users",
            f"{len(self.created)} new passwords",
            f"{len(self.users) - len(self.created)} kept",
        ]
        if self.removed:
            parts.append("removed: " + ", ".join(self.removed))
        if self.tls is not None:
            parts.append(self.tls.summary())
        return ", ".join(parts)


# ------------------------------------------------------------------------------ users, ACL


def partner_users(net: Network) -> list[User]:
    meters: dict[str, list[str]] = {p.id: [] for p in net.partners}
    for meter in net.meters:
        meters[meter.partner].append(meter.id)
    exchanges: dict[str, list[str]] = {p.id: [] for p in net.partners}
    for ex in net.exchanges:
        exchanges[ex.provider].append(ex.id)
        exchanges[ex.receiver].append(ex.id)
    owners = sparkplug_node_owners(net)
    users = []
    for partner in net.partners:
        subjects = [partner.id, *meters[partner.id], *exchanges[partner.id]]
        grants = [
            ("write", f"symbiont/readings/{partner.id}/#"),
            ("read", f"symbiont/statements/{partner.id}"),
            *(("read", f"symbiont/alerts/{s}") for s in dict.fromkeys(subjects)),
        ]
        for (group, node), owner in owners.items():
            if owner == {partner.id}:
                grants += [
                    ("write", f"spBv1.0/{group}/+/{node}"),
                    ("write", f"spBv1.0/{group}/+/{node}/+"),
                    ("read", f"spBv1.0/{group}/NCMD/{node}"),
                ]
        users.append(User(partner.id, "partner", tuple(grants), partner.name))
    return users


def sparkplug_node_owners(net: Network) -> dict[tuple[str, str], set[str]]:
    """(group, edge node) → the partners whose meters name it as their Sparkplug source."""
    owners: dict[tuple[str, str], set[str]] = {}
    for meter in net.meters:
        if meter.sparkplug is not None:
            key = (meter.sparkplug.group, meter.sparkplug.node)
            owners.setdefault(key, set()).add(meter.partner)
    return owners


def shared_sparkplug_nodes(net: Network) -> list[str]:
    """Edge nodes mapped to meters of several partners: granted to none of them."""
    return [
        f"Sparkplug node {group}/{node} is the source of meters of {', '.join(sorted(owner))}:"
        " no partner may publish as it (give it broker credentials of its own)"
        for (group, node), owner in sparkplug_node_owners(net).items()
        if len(owner) > 1
    ]


def service_users() -> list[User]:
    return [
        User(
            INGEST_USER,
            "service",
            (
                ("read", "symbiont/readings/#"),
                ("read", "spBv1.0/#"),
                ("write", "spBv1.0/+/NCMD/+"),
            ),
            "symbiont ingest: the shared subscriptions $share/<group>/symbiont/readings/# and"
            " of Sparkplug B, and rebirth requests",
        ),
        User(
            RULES_USER,
            "service",
            (("write", "symbiont/alerts/#"), ("write", "symbiont/statements/#")),
            "symbiont rules: alert states (retained) and statement notices",
        ),
        User(
            MONITOR_USER,
            "service",
            (("read", "symbiont/#"), ("read", "spBv1.0/#"), ("read", "$SYS/#")),
            "operators and monitoring: reads everything, publishes nothing",
        ),
    ]


def users_for(net: Network) -> list[User]:
    """Every broker user of ``net``: partners first (in file order), then the services."""
    problems = [
        f"partners[{i}].id: '{p.id}' is the name of a broker service user; choose another id"
        for i, p in enumerate(net.partners)
        if p.id in SERVICE_USERS
    ]
    if problems:
        raise NetworkError(problems)
    return [*partner_users(net), *service_users()]


def shared_alert_topics(net: Network) -> list[str]:
    """Alert subjects named by more than one of partner, meter and exchange ids.

    Such a subject's topic carries alerts about each of them, and every partner granted it
    reads them all; worth a warning.
    """
    seen: dict[str, list[str]] = {}
    for kind, ids in (
        ("partner", [p.id for p in net.partners]),
        ("meter", [m.id for m in net.meters]),
        ("exchange", [e.id for e in net.exchanges]),
    ):
        for item in ids:
            seen.setdefault(item, []).append(kind)
    return [
        f"'{subject}' is both a {' and a '.join(kinds)} id: symbiont/alerts/{subject} carries"
        " alerts about each, readable by every partner granted it"
        for subject, kinds in seen.items()
        if len(kinds) > 1
    ]


def render_acl(net: Network, users: Iterable[User]) -> str:
    lines = [
        f"# Mosquitto ACL for symbiont network '{net.network}', written by"
        " `symbiont broker-config`.",
        "# Regenerate it rather than edit it.  Anonymous clients get nothing (and are refused).",
        "",
    ]
    for user in users:
        note = f" ({user.note})" if user.note else ""
        lines += [f"# {user.role} {user.name}{note}", f"user {user.name}"]
        lines += [f"topic {access} {topic}" for access, topic in user.grants]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- passwords


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Mosquitto's ``$7$`` hash (PBKDF2-HMAC-SHA512) of ``password``: ``$7$101$salt$hash``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``encoded`` (a ``$7$`` hash from a password file) is the hash of ``password``."""
    match = _HASH_RE.match(encoded)
    if match is None:
        return False
    try:
        iterations = int(match.group(1))
        salt = base64.b64decode(match.group(2), validate=True)
        expected = base64.b64decode(match.group(3), validate=True)
    except ValueError:
        return False
    if not 0 < iterations <= 10_000_000:
        return False
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(key, expected)


def password_variable(user: str) -> str:
    """``asnaes`` → ``SYMBIONT_MQTT_PASSWORD_ASNAES``, ``symbiont-ingest`` →
    ``SYMBIONT_MQTT_PASSWORD_SYMBIONT_INGEST``."""
    return PASSWORD_VARIABLE_PREFIX + user.upper().replace("-", "_")


def user_of_variable(name: str) -> str | None:
    """The inverse of :func:`password_variable` (None for any other variable)."""
    if not name.startswith(PASSWORD_VARIABLE_PREFIX) or name == PASSWORD_VARIABLE_PREFIX:
        return None
    return name.removeprefix(PASSWORD_VARIABLE_PREFIX).lower().replace("_", "-")


def generate_password() -> str:
    return secrets.token_urlsafe(24)


def read_credentials(path: Path) -> dict[str, str]:
    """``{user: password}`` from a ``credentials.env`` (``{}`` if there is none).

    Blank lines, ``#`` comments and variables of other names are ignored; ``export NAME=…``
    and a value in matching quotes are accepted, as a person editing the file might write.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}:{number}: not NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        user = user_of_variable(name.strip())
        if user is None:
            continue
        if not value or _UNSAFE_PASSWORD_RE.search(value):
            raise ValueError(
                f"{path}:{number}: the password of '{user}' is empty or has a character an env"
                " file cannot carry unquoted (whitespace, quotes, $, \\, `, #)"
            )
        found[user] = value
    return found


def read_password_hashes(path: Path) -> dict[str, str]:
    """``{user: $7$… hash}`` from an existing Mosquitto password file (``{}`` if none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    hashes = {}
    for line in text.splitlines():
        user, sep, encoded = line.strip().partition(":")
        if sep and user and not user.startswith("#"):
            hashes[user] = encoded
    return hashes


def render_passwd(passwords: Mapping[str, str], previous: Mapping[str, str]) -> str:
    lines = []
    for user in sorted(passwords):
        old = previous.get(user)
        encoded = old if old and verify_password(passwords[user], old) else None
        lines.append(f"{user}:{encoded or hash_password(passwords[user])}")
    return "\n".join(lines) + "\n"


def render_credentials(net: Network, passwords: Mapping[str, str]) -> str:
    lines = [
        f"# MQTT passwords for symbiont network '{net.network}', written by"
        " `symbiont broker-config`.",
        "# Secret: give each partner its own line only.  A password set here is kept on the",
        "# next run; delete a line to have a new password generated.",
        "# Shell: set -a; . ./credentials.env; set +a   Docker: docker compose --env-file …",
    ]
    lines += [f"{password_variable(user)}={passwords[user]}" for user in sorted(passwords)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------- mosquitto.conf


def render_conf(
    net: Network,
    *,
    broker_dir: str = DEFAULT_BROKER_DIR,
    data_dir: str = DEFAULT_DATA_DIR,
    port: int = DEFAULT_PORT,
    tls: TlsOptions | None = None,
) -> str:
    broker = broker_dir.rstrip("/") or "/"
    data = data_dir.rstrip("/") + "/"  # Mosquitto concatenates location and file name
    listeners = [f"listener {port}"] if tls is None else []
    return "\n".join(
        [
            f"# Mosquitto for symbiont network '{net.network}', written by"
            " `symbiont broker-config`.",
            "# Every client authenticates; what each user may publish and read is in the ACL.",
            "# Persistence keeps ingest's sessions and their queued readings across restarts;",
            "# the queue limits are lifted (0 = none) because Mosquitto's defaults drop QoS 1",
            "# messages beyond 1000 per client while the publisher is still acknowledged: a",
            "# backlog waits in the broker (about 200 bytes a reading) instead.  Size the data",
            "# volume for the backlog you must survive (docs/deployment.md).",
            *listeners,
            "allow_anonymous false",
            f"password_file {os.path.join(broker, PASSWD_FILE)}",
            f"acl_file {os.path.join(broker, ACL_FILE)}",
            f"persistence_location {data}",
            *broker_settings(),
            "log_dest stdout",
            *(listener_lines(tls, broker, port) if tls is not None else []),
            "",
        ]
    )


# ---------------------------------------------------------------------------------- writing


def _write(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically by a file of ``mode`` holding ``text``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_broker_config(
    net: Network,
    out: Path,
    *,
    broker_dir: str = DEFAULT_BROKER_DIR,
    data_dir: str = DEFAULT_DATA_DIR,
    port: int = DEFAULT_PORT,
    tls: TlsOptions | None = None,
) -> Result:
    """Write mosquitto.conf, passwd, acl and credentials.env for ``net`` into ``out``; with
    ``tls``, the certificates of :mod:`cli.brokertls` too (before the configuration that
    names them)."""
    users = users_for(net)
    out.mkdir(parents=True, exist_ok=True)
    existing = read_credentials(out / CREDENTIALS_FILE)
    names = [u.name for u in users]
    passwords: dict[str, str] = {}
    result = Result(
        out=out, users=names, warnings=shared_alert_topics(net) + shared_sparkplug_nodes(net)
    )
    for name in names:
        if name in existing:
            passwords[name] = existing[name]
        else:
            passwords[name] = generate_password()
            result.created.append(name)
    result.removed = sorted(set(existing) - set(names))
    previous = read_password_hashes(out / PASSWD_FILE)
    # Secrets first: should a later write fail, the passwords the hashes belong to are kept.
    _write(out / CREDENTIALS_FILE, render_credentials(net, passwords), 0o600)
    _write(out / PASSWD_FILE, render_passwd(passwords, previous), 0o644)
    _write(out / ACL_FILE, render_acl(net, users), 0o644)
    if tls is not None:
        result.tls = write_tls(out, net.network, names, tls, service_users=SERVICE_USERS)
    conf = render_conf(net, broker_dir=broker_dir, data_dir=data_dir, port=port, tls=tls)
    _write(out / CONF_FILE, conf, 0o644)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the network file")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="directory for mosquitto.conf, passwd, acl, credentials.env (default: .)",
    )
    parser.add_argument(
        "--broker-dir",
        default=DEFAULT_BROKER_DIR,
        help="where the broker reads passwd and acl, as written into mosquitto.conf"
        f" (default {DEFAULT_BROKER_DIR}, the Mosquitto image's config directory)",
    )
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help=f"the broker's persistence directory (default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="plain MQTT listener port (default 1883)",
    )
    tls = parser.add_argument_group(
        "TLS",
        "A TLS listener with the park CA's certificate or your own, and client certificates"
        " (docs/tls.md).  Once written, a re-run keeps TLS and these choices unless told"
        " otherwise.",
    )
    tls.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a TLS listener (--no-tls: remove it); implied by the options below",
    )
    tls.add_argument(
        "--tls-port", type=int, default=None, help=f"TLS listener port (default {DEFAULT_TLS_PORT})"
    )
    tls.add_argument(
        "--server-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address partners reach the broker by, for the certificate the"
        " park CA issues (repeat for several; mosquitto, localhost and 127.0.0.1 are always in)",
    )
    tls.add_argument("--cert", type=Path, help="your own broker certificate (PEM, with its chain)")
    tls.add_argument("--key", type=Path, help="the private key of --cert (PEM, unencrypted)")
    tls.add_argument(
        "--ca", type=Path, help="the CA certificate(s) that issued --cert: what clients trust"
    )
    tls.add_argument(
        "--client-auth",
        choices=CLIENT_AUTH,
        default=None,
        help="password: user name and password over TLS (default); certificate: every client"
        " presents a certificate of the park CA, whose common name is its user",
    )
    tls.add_argument(
        "--plain-listener",
        choices=PLAIN_LISTENER,
        default=None,
        help="the plain listener (--port) beside TLS: localhost (default: health checks and"
        " local tools), off, or all (every interface, while meters move over to TLS)",
    )
    tls.add_argument(
        "--renew",
        action="store_true",
        help="issue the broker's and the client certificates anew (the old ones are revoked)",
    )
    tls.add_argument(
        "--reissue",
        action="append",
        default=[],
        metavar="USER",
        help="issue USER's client certificate anew and revoke the old one (a lost or leaked"
        " key); repeat for several",
    )
    tls.add_argument(
        "--new-ca",
        action="store_true",
        help="make a new park CA and issue every certificate anew: every client needs its"
        " new files",
    )


def tls_options(args: argparse.Namespace) -> TlsOptions | None:
    """The TLS options of the command line, completed from the previous run's mosquitto.conf
    (``None``: no TLS listener)."""
    previous = previous_options(args.out / CONF_FILE)
    implied = bool(
        args.tls_port or args.server_name or args.cert or args.key or args.ca or args.client_auth
    )
    implied = implied or bool(args.plain_listener or args.renew or args.reissue or args.new_ca)
    if args.tls is False:
        if implied:
            raise TlsError("--no-tls with TLS options: choose one")
        return None
    if not (args.tls or implied or previous):
        return None
    base = previous or TlsOptions()
    return replace(
        base,
        port=args.tls_port or base.port,
        client_auth=args.client_auth or base.client_auth,
        plain=args.plain_listener or base.plain,
        server_names=tuple(args.server_name),
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        renew=args.renew,
        reissue=tuple(args.reissue),
        new_ca=args.new_ca,
    )


def run(args: argparse.Namespace) -> int:
    import sys

    net = load_network(args.file)
    try:
        tls = tls_options(args)
        if tls is not None and tls.port == args.port:
            raise TlsError(f"--tls-port and --port are both {args.port}")
        result = write_broker_config(
            net,
            args.out,
            broker_dir=args.broker_dir,
            data_dir=args.data_dir,
            port=args.port,
            tls=tls,
        )
    except TlsError as exc:
        print(f"symbiont: error: {exc}", file=sys.stderr)
        return 1
    for warning in [*result.warnings, *(result.tls.warnings if result.tls else [])]:
        print(f"symbiont: warning: {warning}", file=sys.stderr)
    files = ", ".join((CONF_FILE, PASSWD_FILE, ACL_FILE, CREDENTIALS_FILE))
    if tls is not None:
        files += ", tls/, clients/"
    print(f"wrote {files} to {args.out}: {result.summary()}")
    if tls is not None and result.tls is not None:
        names = ", ".join(result.tls.server_names) or "(see the certificate)"
        print(f"TLS on port {tls.port}, clients authenticate by {tls.client_auth}; names: {names}")
    return 0
