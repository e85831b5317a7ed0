"""Standard Webhooks signatures (https://www.standardwebhooks.com): pure functions, no I/O.

A message is signed as ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``.  The key
is the secret's bytes: ``whsec_<base64>`` (the spec's form, what other implementations
generate) is base64-decoded; any other text is used as its UTF-8 bytes, so an operator can
configure a plain passphrase.  Receivers using a Standard Webhooks library pass the same
``whsec_`` string; for a plain passphrase they pass its bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
DEFAULT_TOLERANCE_S = 300  # the spec's recommended window against replay

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class InvalidSecret(ValueError):
    """A configured secret that cannot be used; the message says why."""


class InvalidSignature(ValueError):
    """A message whose headers, timestamp or signature do not verify."""


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key for ``secret``: bytes as given, ``whsec_`` base64-decoded, else UTF-8."""
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            # Tolerate missing padding, as the reference libraries do.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidSecret(f"{SECRET_PREFIX}… secret is not valid base64: {exc}") from None
    else:
        key = secret.encode("utf-8")
    if not key:
        raise InvalidSecret("webhook secret is empty")
    return key


def generate_secret(nbytes: int = 32) -> str:
    """A new random secret in the ``whsec_<base64>`` form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 signature>`` of ``body`` sent as message ``msg_id`` at unix ``timestamp``."""
    signed = b"%s.%d.%s" % (msg_id.encode("utf-8"), timestamp, body)
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str | bytes | None, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt; unsigned when ``secret`` is ``None``."""
    result = {HEADER_ID: msg_id, HEADER_TIMESTAMP: str(timestamp)}
    if secret is not None:
        result[HEADER_SIGNATURE] = sign(secret, msg_id, timestamp, body)
    return result


def verify(
    secret: str | bytes,
    message_headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> None:
    """Raise ``InvalidSignature`` unless one ``v1`` signature in the headers matches ``body``
    and the timestamp is within ``tolerance_s`` of ``now`` (default: the current time)."""
    lowered = {key.lower(): value for key, value in message_headers.items()}
    msg_id = lowered.get(HEADER_ID)
    stamp = lowered.get(HEADER_TIMESTAMP)
    signatures = lowered.get(HEADER_SIGNATURE)
    if not (msg_id and stamp and signatures):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise InvalidSignature(f"webhook-timestamp is not an integer: {stamp!r}") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise InvalidSignature(
            f"webhook-timestamp {timestamp} is more than {tolerance_s:g} s from now ({current:.0f})"
        )
    expected = sign(secret, msg_id, timestamp, body).encode("ascii")
    for candidate in signatures.split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode("utf-8"), expected):
            return
    raise InvalidSignature("no matching v1 signature")
