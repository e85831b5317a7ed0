"""TLS for the broker that ``symbiont broker-config --tls`` configures.

The files live in two directories under the broker-config output directory:

``tls/`` (0700)
    ``ca.crt`` / ``ca.key`` — the park CA: made once (``--new-ca`` makes another), it signs the
    client certificates and, unless the operator supplies one, the broker's certificate.
    ``ca.key`` (0600) never leaves this directory: nothing mounts it into a container.
    ``server.crt`` / ``server.key`` — the broker's certificate (its chain) and key: issued by
    the park CA for ``--server-name`` names, or copies of the operator's ``--cert``/``--key``.
    ``server-ca.crt`` — what clients verify the broker with: the park CA, or the operator's
    ``--ca``.  ``ca.crl`` — the park CA's revocation list: every client certificate replaced
    or withdrawn by a run (mosquitto's ``crlfile``).

``clients/`` (0700, with ``--client-auth certificate``)
    ``USER.crt`` / ``USER.key`` for every broker user, the certificate's common name being
    the user name (``use_identity_as_username``).

Files a container reads (the broker's key, the service users' keys) are mode 0644 inside a
0700 directory: on the host only the directory's owner reaches them, while the broker and
the symbiont services, which run as users of their own inside their containers, can read
the files mounted for them.  The partners' keys, which nothing mounts, are 0600.

A re-run keeps what is still good, so it rewrites identical bytes: the CA, a server
certificate that is issued by the current CA for the same names and valid for more than
``RENEW_DAYS`` days, and each user's client certificate on the same terms.  A server
certificate the park CA did not issue is the operator's and is kept as it is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR = "tls"
CLIENTS_DIR = "clients"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_CRL = "ca.crl"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
SERVER_CA = "server-ca.crt"

DEFAULT_TLS_PORT = 8883
# The names every generated broker certificate carries: the broker seen from its own host,
# and the Compose service name the symbiont services connect to.
DEFAULT_SERVER_NAMES = ("mosquitto", "localhost", "127.0.0.1")
CA_DAYS = 3650
CERT_DAYS = 397
RENEW_DAYS = 30  # a certificate closer than this to its end is issued anew by a re-run
CRL_DAYS = 3650  # the list must stay valid: an expired one makes the broker refuse everyone

ClientAuth = Literal["password", "certificate"]
PlainListener = Literal["localhost", "off", "all"]
CLIENT_AUTH: tuple[ClientAuth, ...] = ("password", "certificate")
PLAIN_LISTENER: tuple[PlainListener, ...] = ("localhost", "off", "all")


class TlsError(ValueError):
    """A certificate or key the operator supplied cannot be used; the message says why."""


@dataclass(frozen=True)
class TlsOptions:
    """How the TLS listener is set up (``None``: as the previous run left it, else default)."""

    port: int = DEFAULT_TLS_PORT
    client_auth: ClientAuth = "password"
    plain: PlainListener = "localhost"
    server_names: tuple[str, ...] = ()  # added to DEFAULT_SERVER_NAMES
    cert: Path | None = None  # the operator's certificate (chain), key and issuing CA
    key: Path | None = None
    ca: Path | None = None
    renew: bool = False  # issue the broker's and every client certificate anew
    reissue: tuple[str, ...] = ()  # users whose client certificate is issued anew (and revoked)
    new_ca: bool = False  # a new park CA (and so new certificates for everyone)


@dataclass
class TlsResult:
    issued: list[str] = field(default_factory=list)  # "server", user names
    revoked: list[str] = field(default_factory=list)  # user names whose old cert was revoked
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    server_names: list[str] = field(default_factory=list)
    operator_certificate: bool = False

    def summary(self) -> str:
        parts = [f"TLS: {len(self.issued)} certificates issued"]
        if self.revoked:
            parts.append("revoked: " + ", ".join(self.revoked))
        return ", ".join(parts)


# ----------------------------------------------------------------------------- helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically by a file of ``mode`` holding ``data`` (unless equal)."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_bytes() == data:
            os.chmod(path, mode)
            return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert``."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _fresh(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Issued by ``ca`` and valid for more than RENEW_DAYS days more."""
    left = cert.not_valid_after_utc - _now()
    return issued_by(cert, ca) and left > dt.timedelta(days=RENEW_DAYS)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of ``cert``'s subject alternative names."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def common_name(cert: x509.Certificate) -> str:
    found = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(found[0].value) if found else ""


def check_server_name(name: str) -> str:
    """A DNS name or an IP address fit for a certificate, else ``TlsError``."""
    name = name.strip().lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    labels = name.split(".")
    ok = all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label.removeprefix("*"))
        for label in labels
    )
    if not ok or len(name) > 253:
        raise TlsError(f"--server-name {name!r} is neither a DNS name nor an IP address")
    return name


# ------------------------------------------------------------------------ certificates


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # a little slack for clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(network: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name(
        [
            # X.509 allows at most 64 characters in each
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"symbiont {network}"[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, f"symbiont park CA {network}"[:64]),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    usage: x509.ObjectIdentifier,
    names: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    subject = x509.Name(
        [
            *ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    builder = (
        _builder(subject, ca.subject, key.public_key(), CERT_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_server_cert(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: Sequence[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    # Clients check the names against the subject alternative names; the common name only
    # labels the certificate (and may hold no more than 64 characters).
    label = names[0] if len(names[0]) <= 64 else "symbiont broker"
    return _leaf(ca, ca_key, label, ExtendedKeyUsageOID.SERVER_AUTH, names)


def make_client_cert(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, user: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return _leaf(ca, ca_key, user, ExtendedKeyUsageOID.CLIENT_AUTH)


def make_crl(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, serials: Iterable[int]
) -> x509.CertificateRevocationList:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=CRL_DAYS))
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def _revoked_serials(path: Path, ca: x509.Certificate) -> list[int]:
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return []
    if not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        return []  # the list of an earlier CA: its certificates are no longer trusted anyway
    return [revoked.serial_number for revoked in crl]


# -------------------------------------------------------------------------- the files


def _operator_certificate(options: TlsOptions, tls: Path, result: TlsResult) -> None:
    """Check the operator's --cert/--key/--ca and copy them into ``tls``."""
    assert options.cert is not None and options.key is not None
    if options.ca is None:
        raise TlsError(
            "--cert needs --ca: the certificate(s) clients verify the broker with (the CA that"
            " issued --cert)"
        )
    try:
        chain = options.cert.read_bytes()
        key = options.key.read_bytes()
        ca = options.ca.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        leaf = x509.load_pem_x509_certificate(chain)
        trusted = x509.load_pem_x509_certificates(ca)
    except ValueError as exc:
        raise TlsError(f"--cert/--ca: not a PEM certificate: {exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(options.cert, options.key)
    except ssl.SSLError as exc:
        raise TlsError(f"--key does not belong to --cert ({exc.reason})") from None
    try:  # what clients will load: certificates OpenSSL accepts
        ssl.create_default_context(cadata=ca.decode("ascii", "replace"))
    except ssl.SSLError as exc:
        raise TlsError(f"--ca: not usable as trusted certificates ({exc.reason})") from None
    if leaf.not_valid_after_utc < _now() + dt.timedelta(days=RENEW_DAYS):
        result.warnings.append(
            f"the broker's certificate ends {leaf.not_valid_after_utc:%Y-%m-%d}: renew it"
        )
    if (
        not any(issued_by(leaf, c) or leaf == c for c in trusted)
        and len(x509.load_pem_x509_certificates(chain)) == 1
    ):
        result.warnings.append(
            "--ca did not issue --cert directly (fine if --cert holds the intermediate"
            " certificates, or --ca is the root above them)"
        )
    _write(tls / SERVER_CERT, chain, 0o644)
    _write(tls / SERVER_KEY, key, 0o644)
    _write(tls / SERVER_CA, ca, 0o644)
    result.issued.append("server (the operator's, copied)")
    result.operator_certificate = True
    result.server_names = certificate_names(leaf)


def write_tls(
    out: Path,
    network: str,
    users: Sequence[str],
    options: TlsOptions,
    *,
    service_users: Iterable[str] = (),
) -> TlsResult:
    """Make or keep the CA, the broker's certificate, client certificates and the CRL."""
    result = TlsResult()
    tls = _private_dir(out / TLS_DIR)
    if (options.cert is None) != (options.key is None):
        raise TlsError("--cert and --key go together")
    unknown = sorted(set(options.reissue) - set(users))
    if unknown:
        raise TlsError(f"--reissue: no broker user {', '.join(map(repr, unknown))}")

    ca = _load_cert(tls / CA_CERT)
    ca_key = _load_key(tls / CA_KEY)
    if options.new_ca or ca is None or ca_key is None or not _same_key(ca, ca_key):
        if ca is not None and not options.new_ca:
            result.warnings.append("the park CA's files did not match: a new CA was made")
        ca, ca_key = make_ca(network)
        result.issued.append("park CA")
        revoked: list[int] = []
    else:
        revoked = _revoked_serials(tls / CA_CRL, ca)
        if ca.not_valid_after_utc < _now() + dt.timedelta(days=CERT_DAYS):
            result.warnings.append(
                f"the park CA ends {ca.not_valid_after_utc:%Y-%m-%d}: make a new one with"
                " --new-ca and give the partners their new files"
            )
    _write(tls / CA_KEY, _key_pem(ca_key), 0o600)
    _write(tls / CA_CERT, _pem(ca), 0o644)

    # The broker's certificate.
    server = _load_cert(tls / SERVER_CERT)
    server_key = _load_key(tls / SERVER_KEY)
    wanted = list(
        dict.fromkeys(
            [*(check_server_name(n) for n in options.server_names), *DEFAULT_SERVER_NAMES]
        )
    )
    if options.cert is not None:
        _operator_certificate(options, tls, result)
    elif server is not None and not issued_by(server, ca) and not options.new_ca:
        # Supplied by the operator on an earlier run: theirs to renew.
        result.operator_certificate = True
        result.server_names = certificate_names(server)
        result.notes.append("kept the broker certificate supplied earlier (--cert)")
        if server.not_valid_after_utc < _now() + dt.timedelta(days=RENEW_DAYS):
            result.warnings.append(
                f"the broker's certificate ends {server.not_valid_after_utc:%Y-%m-%d}: renew"
                " it (--cert/--key/--ca)"
            )
    else:
        if not options.server_names and server is not None and issued_by(server, ca):
            # Names given on an earlier run are kept unless new ones are given.
            wanted = list(dict.fromkeys([*certificate_names(server), *wanted]))
        keep = (
            server is not None
            and server_key is not None
            and not options.renew
            and _same_key(server, server_key)
            and _fresh(server, ca)
            and sorted(certificate_names(server)) == sorted(wanted)
        )
        if not keep:
            server, server_key = make_server_cert(ca, ca_key, wanted)
            result.issued.append("server")
        assert server is not None and server_key is not None
        _write(tls / SERVER_KEY, _key_pem(server_key), 0o644)
        _write(tls / SERVER_CERT, _pem(server), 0o644)
        _write(tls / SERVER_CA, _pem(ca), 0o644)
        result.server_names = certificate_names(server)

    # Client certificates: the service users always (the Compose services present theirs,
    # so they connect in either mode), every partner when clients authenticate with them.
    clients = _private_dir(out / CLIENTS_DIR)
    services = set(service_users)
    certify = [u for u in users if options.client_auth == "certificate" or u in services]
    for user in certify:
        cert = _load_cert(clients / f"{user}.crt")
        key = _load_key(clients / f"{user}.key")
        keep = (
            cert is not None
            and key is not None
            and not options.renew
            and user not in options.reissue
            and _same_key(cert, key)
            and common_name(cert) == user
            and _fresh(cert, ca)
            and cert.serial_number not in revoked
        )
        if not keep:
            if cert is not None and issued_by(cert, ca):
                revoked.append(cert.serial_number)
                result.revoked.append(user)
            cert, key = make_client_cert(ca, ca_key, user)
            result.issued.append(user)
        assert cert is not None and key is not None
        # Services' keys are mounted into their containers (see the module docstring).
        _write(clients / f"{user}.key", _key_pem(key), 0o644 if user in services else 0o600)
        _write(clients / f"{user}.crt", _pem(cert), 0o644)
    for path in sorted(clients.glob("*.crt")):
        user = path.stem
        if user in users:
            continue  # a partner's certificate is kept while it is in the network
        gone = _load_cert(path)
        if gone is not None and issued_by(gone, ca):
            revoked.append(gone.serial_number)
        result.revoked.append(user)
        path.unlink()
        (clients / f"{user}.key").unlink(missing_ok=True)

    # The revocation list is signed anew only when it changes, so a re-run keeps its bytes.
    if not (tls / CA_CRL).exists() or sorted(set(revoked)) != _revoked_serials(tls / CA_CRL, ca):
        crl = make_crl(ca, ca_key, revoked)
        _write(tls / CA_CRL, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return result


# ---------------------------------------------------------------------- mosquitto.conf


def listener_lines(options: TlsOptions, broker_dir: str, plain_port: int) -> list[str]:
    """The listeners of a TLS configuration: the plain one (if any), then the TLS one."""
    tls = os.path.join(broker_dir, TLS_DIR)
    lines: list[str] = []
    if options.plain == "localhost":
        lines += [
            "# Plain MQTT for this host only (health checks, local tools).",
            f"listener {plain_port} 127.0.0.1",
        ]
    elif options.plain == "all":
        lines += [
            "# Plain MQTT on every interface: passwords travel unencrypted.  Meant for the",
            "# weeks a park moves its meters over to TLS; then --plain-listener localhost.",
            f"listener {plain_port}",
        ]
    lines += [
        "# MQTT over TLS.",
        f"listener {options.port}",
        f"certfile {os.path.join(tls, SERVER_CERT)}",
        f"keyfile {os.path.join(tls, SERVER_KEY)}",
        "tls_version tlsv1.2",
    ]
    if options.client_auth == "certificate":
        lines += [
            "# Every client presents a certificate of the park CA; its common name is the",
            "# user name the ACL applies to (the password is not asked for).",
            f"cafile {os.path.join(tls, CA_CERT)}",
            f"crlfile {os.path.join(tls, CA_CRL)}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
    else:
        lines += [
            "# Clients sign in with their user name and password.",
            "require_certificate false",
        ]
    return lines


def previous_options(conf: Path) -> TlsOptions | None:
    """The listener choices an earlier ``--tls`` run wrote into ``conf`` (port, client
    authentication, plain listener; the rest default), or ``None`` if it has no TLS
    listener or there is no such file."""
    try:
        text = conf.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    settings = [line.split() for line in text.splitlines() if line.strip()[:1] not in ("", "#")]
    listeners = [words[1:] for words in settings if words[0] == "listener"]
    if not listeners or not any(words[0] == "certfile" for words in settings):
        return None
    *plain, secured = listeners
    client_auth: ClientAuth = (
        "certificate" if ["use_identity_as_username", "true"] in settings else "password"
    )
    plain_listener: PlainListener = "off" if not plain else ("localhost" if plain[0][1:] else "all")
    try:
        port = int(secured[0])
    except (ValueError, IndexError):
        port = DEFAULT_TLS_PORT
    return TlsOptions(port=port, client_auth=client_auth, plain=plain_listener)
