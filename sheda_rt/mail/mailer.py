"""Mailers. With SMTP_HOST set, mail goes over SMTP (in a thread: smtplib blocks).
Without it, every mail is written to DATA_DIR/outbox as one .eml file and logged,
so OTP flows work on the embedded default. Both remember what they sent in this
process (`sent`), which is how tests read OTP codes.

A mail may carry extra headers (`List-Unsubscribe`, `List-Unsubscribe-Post`: RFC 2369 / RFC 8058
one-click unsubscribe) and attachments (a reminder's `.ics`); the text body stays the first part."""
from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import EmailPolicy
from pathlib import Path

import idna

log = logging.getLogger("sheda.mail")

# Headers whose value is one long `<url>` that mail clients read literally (RFC 2369): the default
# policy folds a word longer than 78 characters into RFC 2047 encoded words (=?utf-8?q?...?=), which
# no client reads as a URL, so these go out on one line (RFC 5322 allows 998).
UNFOLDED = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


class _MailPolicy(EmailPolicy):
    def fold(self, name, value):
        if name.lower() in UNFOLDED and str(value).isascii() and len(name) + len(str(value)) < 990:
            return f"{name}: {value}{self.linesep}"
        return super().fold(name, value)

    def fold_binary(self, name, value):
        if name.lower() in UNFOLDED and str(value).isascii() and len(name) + len(str(value)) < 990:
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


MAIL_POLICY = _MailPolicy()


def ascii_domain(address: str) -> str:
    """`address` with an internationalized domain in its ASCII (punycode) form: "ada@bücher.de" is
    "ada@xn--bcher-kva.de", the same mailbox. In UTF-8 it needs SMTPUTF8, which many servers do not offer
    (smtplib then refuses to send); in a header it became RFC 2047 words, which no address may hold. A
    non-ASCII local part still needs SMTPUTF8: left as it is."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        return address


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    mime_type: str  # "text/calendar; method=PUBLISH"


@dataclass
class SentMail:
    to: str
    subject: str
    body: str
    headers: dict = field(default_factory=dict)
    message: EmailMessage | None = None  # exactly what was delivered (headers, attachments)


class Mailer:
    def __init__(self, sender: str):
        self.sender = sender
        self.sent: list[SentMail] = []

    def _message(self, to: str, subject: str, body: str, headers: dict | None = None,
                 attachments: list[Attachment] | tuple = ()) -> EmailMessage:
        msg = EmailMessage(policy=MAIL_POLICY)
        # A subject quotes what users typed (a listing's title): a line break in it would make the header
        # unwritable (ValueError), and the mail, a viewing's reminder to someone else, would never go out.
        msg["From"], msg["To"], msg["Subject"] = self.sender, ascii_domain(to), " ".join(subject.split())
        for name, value in (headers or {}).items():
            msg[name] = value
        msg.set_content(body)
        for att in attachments:
            maintype, _, rest = att.mime_type.partition("/")
            subtype, *params = [p.strip() for p in rest.split(";")]
            msg.add_attachment(att.content, maintype=maintype, subtype=subtype, filename=att.filename,
                               params=dict(p.split("=", 1) for p in params if "=" in p))
        return msg

    async def send(self, to: str, subject: str, body: str, *, headers: dict | None = None,
                   attachments: list[Attachment] | tuple = ()) -> None:
        msg = self._message(to, subject, body, headers, attachments)
        await self._deliver(msg)
        self.sent.append(SentMail(to, subject, body, dict(headers or {}), msg))
        del self.sent[:-1000]  # keep memory bounded in a long-running process

    async def _deliver(self, msg: EmailMessage) -> None:
        raise NotImplementedError

    def last_to(self, address: str) -> SentMail | None:
        for mail in reversed(self.sent):
            if mail.to.lower() == address.lower():
                return mail
        return None


class OutboxMailer(Mailer):
    def __init__(self, sender: str, outbox: Path):
        super().__init__(sender)
        self.outbox = outbox

    async def _deliver(self, msg: EmailMessage) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self.outbox / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
        path.write_bytes(bytes(msg))
        log.info(json.dumps({"event": "mail_outbox", "to": msg["To"], "subject": msg["Subject"], "file": str(path)}))


class SmtpMailer(Mailer):
    def __init__(self, sender: str, host: str, port: int, username: str | None, password: str | None, starttls: bool):
        super().__init__(sender)
        self.host, self.port, self.username, self.password, self.starttls = host, port, username, password, starttls

    def _send_blocking(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=15) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(msg)

    async def _deliver(self, msg: EmailMessage) -> None:
        await asyncio.to_thread(self._send_blocking, msg)


def mailer_from_settings(settings) -> Mailer:
    if settings.smtp_host:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        return SmtpMailer(settings.mail_from, settings.smtp_host, settings.smtp_port, settings.smtp_username, password, settings.smtp_starttls)
    return OutboxMailer(settings.mail_from, settings.outbox_dir)
