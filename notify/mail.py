"""Statement mail. Issued statements (statements/issue.py) go out as a signed webhook, a retained
MQTT notice and, when SMTP is configured (``smtp_url``), a mail per recipient address with the
PDF and CSV attached. A mail row's payload names the statement; the sender reads the stored PDF
and CSV at send time, so the outbox stays small. SMTP replies 4xx and connection trouble are
retried, 5xx fail at once; the ``Message-ID`` is derived from the outbox row, the same on every
retry, so a receiving system can drop the duplicate left by a crash between the server's 250 and
our commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.message import EmailMessage
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from core.settings import Settings
from core.windows import human_time
from notify.outbox import OutboxRow, Outcome

SmtpSecurity = Literal["starttls-if-offered", "starttls", "tls"]
_SMTP_SECURITY: dict[str, tuple[SmtpSecurity, int]] = {
    "smtp": ("starttls-if-offered", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}
STATEMENT_SUBJECT = "Exchange statement {month} — {name}"


@dataclass(frozen=True)
class SmtpServer:
    """Where statement mail goes, from ``smtp_url`` (see core/settings.py for the forms)."""

    host: str
    port: int
    security: SmtpSecurity
    user: str | None = None
    password: str | None = None

    @property
    def where(self) -> str:  # never the credentials
        return f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_smtp_url(url: str) -> SmtpServer:
    """``smtp://``, ``smtp+starttls://`` or ``smtps://`` ``[user[:password]@]host[:port]``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in _SMTP_SECURITY or not parts.hostname:
        raise ValueError("expected smtp://, smtp+starttls:// or smtps://[user[:pass]@]host[:port]")
    security, default_port = _SMTP_SECURITY[parts.scheme]
    return SmtpServer(
        host=parts.hostname,
        port=parts.port or default_port,
        security=security,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def mail_sender(settings: Settings, server: SmtpServer) -> str:
    """The From: ``smtp_from``, else the SMTP user if it is an address, else
    ``symbiont@<this host's FQDN>``."""
    if settings.smtp_from:
        return settings.smtp_from
    if server.user and mail_address(server.user):
        return server.user
    return f"symbiont@{socket.getfqdn()}"


def mail_address(target: str) -> str | None:
    """The bare address of one recipient (``a@b.example`` or ``Name <a@b.example>``), or
    ``None`` if ``target`` is not exactly one plausible address."""
    if "\r" in target or "\n" in target:
        return None
    found = email.utils.getaddresses([target])
    if len(found) != 1:
        return None
    address = found[0][1]
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in address):
        return None
    return address


def mail_message_id(row: OutboxRow, sender: str) -> str:
    """A ``Message-ID`` that is the same on every attempt of the outbox row."""
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "symbiont.invalid"
    key = re.sub(r"[^A-Za-z0-9._-]", "-", row.event_key)
    return f"<symbiont.outbox-{row.id}.{key}@{domain}>"


def _amount(value: Any) -> str:
    try:
        return f"{Decimal(str(value)):,.2f}"
    except (InvalidOperation, ValueError):
        return str(value)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def statement_mail(
    doc: Mapping[str, Any],
    *,
    csv: bytes,
    pdf: bytes,
    sender: str,
    recipient: str,
    message_id: str,
    date: datetime | None = None,
) -> EmailMessage:
    """The mail of one issued statement: totals and content hash in a plain-text body, the
    stored PDF and CSV attached as ``statement-<partner>-<month>.pdf|.csv``."""
    partner, month, currency = str(doc["partner"]), str(doc["month"]), str(doc["currency"])
    name = _one_line(doc.get("partner_name") or partner)
    totals = doc["totals"]
    period = doc.get("period") or {}
    rows = [
        ("Receivable", _amount(totals["receivable"]), currency),
        ("Payable", _amount(totals["payable"]), currency),
        ("Net amount", _amount(totals["net_amount"]), currency),
        ("Avoided cost", _amount(totals["avoided_cost"]), currency),
        ("Net savings", _amount(totals["net_savings"]), currency),
        ("CO2 avoided", str(totals["co2_avoided_t"]), "t"),
    ]
    width = max(len(value) for _, value, _ in rows)
    zone = str(doc.get("timezone") or "") or None

    def when(ts: Any) -> str:  # as the PDF shows it: the network's time and UTC offset
        return human_time(ts, zone) if isinstance(ts, str) and ts else ""

    revision = int(doc.get("revision") or 1)
    issue: list[str] = []
    if doc.get("document_number"):
        issue.append(f"Document number: {doc['document_number']}")
    if revision > 1:
        replaced = doc.get("supersedes") or {}
        issue.append(
            f"Revision {revision}, replacing revision {replaced.get('revision', revision - 1)}"
            + (f" ({replaced['document_number']})" if replaced.get("document_number") else "")
            + f" whose content hash was {doc.get('previous_hash')}"
        )
        issue.append(f"Reason for the revision: {_one_line(doc.get('revision_reason') or '')}")
    if doc.get("incomplete_reason"):
        issue.append(
            f"Issued with incomplete data: {_one_line(doc.get('incomplete_reason') or '')}"
        )
    body = [
        f"Exchange statement of {name} ({partner}) for {month}",
        *(
            [f"Document number: {_one_line(str(doc['document_number']))}"]
            if doc.get("document_number")
            else []
        ),
        f"Network: {_one_line(doc.get('network_name') or doc.get('network') or '')}",
        f"Period: {when(period.get('start'))} to {when(period.get('end'))} ({zone})",
        f"Issued: {when(doc.get('issued_at'))}",
        *issue,
        "",
        *(f"  {label + ':':<14}{value:>{width}} {unit}" for label, value, unit in rows),
        "",
        f"Exchanges: {len(doc.get('lines') or [])}; "
        f"adjustments to earlier months: {len(doc.get('adjustments') or [])}",
        f"Content hash (SHA-256 of the JSON document): {doc['content_hash']}",
        "",
        "The statement is attached as PDF and CSV. This message was sent automatically;",
        "an issued statement never changes, later corrections appear as adjustments on the",
        "next one.",
    ]
    message = EmailMessage()
    message["Subject"] = STATEMENT_SUBJECT.format(month=month, name=name) + (
        f" (revision {revision})" if revision > 1 else ""
    )
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = email.utils.format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message["X-Symbiont-Statement"] = f"{partner} {month}" + (
        f" revision {revision}" if revision > 1 else ""
    )
    message.set_content("\n".join(body) + "\n")
    stem = f"statement-{partner}-{month}" + (f"-r{revision}" if revision > 1 else "")
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"{stem}.pdf")
    message.add_attachment(
        csv, maintype="text", subtype="csv", filename=f"{stem}.csv", params={"charset": "utf-8"}
    )
    return message


def _smtp_reply(code: int, message: bytes | str, what: str) -> Outcome:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    error = f"{what}: {code} {_one_line(text)[:300]}".rstrip()
    if 400 <= code < 500:
        return Outcome.retry(error, code)
    if 500 <= code < 600:
        return Outcome.fail(error, code)
    return Outcome.retry(error, code if code > 0 else None)


def classify_smtp_error(exc: BaseException, where: str) -> Outcome:
    """4xx replies, lost or refused connections and timeouts are worth retrying; 5xx replies,
    a server that lacks what we require (STARTTLS, AUTH) and a certificate that does not
    verify are final."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = list(exc.recipients.items())
        if not refused:
            return Outcome.retry(f"{where} refused the recipients")
        code = min(code for _, (code, _) in refused)  # a 4xx among them: worth retrying
        detail = "; ".join(
            f"{rcpt}: {c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
            for rcpt, (c, m) in refused
        )
        return _smtp_reply(code, detail, f"{where} refused the recipient")
    if isinstance(exc, smtplib.SMTPResponseException):
        return _smtp_reply(exc.smtp_code, exc.smtp_error, f"{where} ({type(exc).__name__})")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if isinstance(exc.__context__, TimeoutError):  # smtplib's wording for a timeout
            return Outcome.retry(f"timeout waiting for {where}: {exc.__context__}")
        return Outcome.retry(f"lost the connection to {where}: {exc}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return Outcome.fail(f"{where}: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Outcome.fail(f"{where}: TLS certificate does not verify: {exc.verify_message}")
    if isinstance(exc, TimeoutError):
        return Outcome.retry(f"timeout talking to {where}")
    if isinstance(exc, OSError):
        return Outcome.retry(f"{type(exc).__name__} talking to {where}: {exc}")
    if isinstance(exc, smtplib.SMTPException):  # e.g. no AUTH method in common
        return Outcome.fail(f"{where}: {exc}")
    raise exc


def _smtp_send(
    server: SmtpServer,
    message: EmailMessage,
    sender: str,
    recipients: list[str],
    timeout_s: float,
) -> None:
    """Blocking: connect, secure, authenticate, send; raises what smtplib raises.

    ``timeout_s`` bounds the whole exchange, not each step, so the thread is done before the
    notifier's guard gives up on the attempt (a thread still sending after the attempt was
    recorded as failed would make the retry a duplicate)."""
    deadline = time.monotonic() + timeout_s
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if server.security == "tls":
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout_s, context=context)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=timeout_s)

    def budget() -> None:  # what is left of timeout_s, for the next step
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer from {server.where} within {timeout_s:g} s")
        if client.sock is not None:
            client.sock.settimeout(left)

    try:
        budget()
        client.ehlo()
        secure = server.security == "tls"
        if not secure and (server.security == "starttls" or client.has_extn("starttls")):
            if not client.has_extn("starttls"):
                raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
            client.starttls(context=context)
            budget()
            client.ehlo()
            secure = True
        if server.user:
            if not secure and not server.loopback:
                raise smtplib.SMTPNotSupportedError(
                    "refusing to send SMTP credentials unencrypted: the server offers no"
                    " STARTTLS (use smtps:// or a server that does)"
                )
            budget()
            client.login(server.user, server.password or "")
        budget()
        client.send_message(message, from_addr=sender, to_addrs=recipients)
        # Sent: whatever QUIT says changes nothing (an error now must not cause a resend), and
        # waiting for it must not outlast the attempt.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            if client.sock is not None:
                client.sock.settimeout(0.5)
            client.quit()
    finally:
        client.close()


async def send_mail(
    server: SmtpServer,
    message: EmailMessage,
    *,
    sender: str,
    recipients: list[str],
    timeout_s: float,
) -> Outcome:
    """Send ``message`` through ``server`` (smtplib in a worker thread; ``timeout_s`` per
    network operation) and classify what happened."""
    try:
        await asyncio.to_thread(_smtp_send, server, message, sender, recipients, timeout_s)
    except (smtplib.SMTPException, OSError) as exc:
        return classify_smtp_error(exc, server.where)
    return Outcome.success(250)
