"""Logging setup, and the one place secrets are taken out of log records.

No log line may hold a token (access, refresh, `otp`-scoped), a password or a
one-time code. They reach log text by many roads we do not write ourselves:
Tornado's "Uncaught exception GET /api/v1/chat/ws?token=eyJ... (ip)" line and the
request repr under it, its "404 GET /x?token=..." warnings, a library's exception
message quoting a header, the driver's DEBUG command log. So redaction is not left
to each call site: `install()` wraps the process's LogRecord factory, and every
record any logger creates is rewritten before any handler sees it.

Why the record factory rather than a `logging.Filter`: a filter on a logger only
sees records logged on that very logger (not its children's), and a filter on a
handler misses handlers added later (an operator's dictConfig, pytest's capture).
The factory is called for every record of every logger, whatever the handlers.

What is rewritten (values only; the names stay so the line still says what was there):
- anything shaped like a JWT (`eyJ<b64url>.<b64url>.<b64url>`): every token we issue;
- `name=value` pairs (query strings, form bodies, `key=value` text) whose name is a
  secret's: token, access_token, refresh_token, otp, code, password, ... ;
- `"name": "value"` / `'name': 'value'` pairs (JSON, dict reprs) with such a name;
- `Bearer <token>`, and the browser subprotocol form `bearer, <token>`;
- header lines `Authorization:`, `Cookie:`, `Sec-WebSocket-Protocol:` ...;
- pydantic's `input_value=...` (the raw value a client sent, password or not).
The exception text of a record (its traceback) is formatted once, redacted, and
kept as `exc_text`; `exc_info` is dropped so no formatter can print it unredacted.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import traceback

REDACTED = "[redacted]"

# Names whose values are secrets wherever they appear as name=value or "name": value.
SECRET_NAMES = (
    "access_token", "refresh_token", "id_token", "otp_token", "token", "jwt", "otp", "code",
    "password", "new_password", "old_password", "current_password", "passwd", "password_hash",
    "code_hash", "secret", "client_secret", "jwt_secret", "api_key", "apikey", "authorization",
)
_NAMES = "|".join(sorted((re.escape(n) for n in SECRET_NAMES), key=len, reverse=True))
# In JSON and reprs "code" is our error vocabulary ({"code": "not_found"}), not a one-time code.
_QUOTED_NAMES = "|".join(sorted((re.escape(n) for n in SECRET_NAMES if n != "code"), key=len, reverse=True))
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "sec-websocket-protocol", "x-api-key")
_HEADERS = "|".join(re.escape(h) for h in SECRET_HEADERS)

# Each rule runs only when one of its trigger words is in the (lowercased) text: most lines (the
# access log's) hold none, and running every pattern on them cost ~110 us per line.
_NAME_WORDS = ("token", "jwt", "otp", "code", "pass", "secret", "key", "authorization")
_HEADER_WORDS = ("authorization", "cookie", "sec-websocket-protocol", "x-api-key")

_RULES: list[tuple[tuple[str, ...], re.Pattern, str]] = [
    # A JWT anywhere: header and payload are base64url JSON, so both start with "eyJ" ('{"').
    (("eyj",), re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Header lines ("Authorization: Bearer x") and header dict entries ("'Cookie': 'a=b'").
    (_HEADER_WORDS, re.compile(rf"(?im)^(\s*(?:{_HEADERS})\s*:\s*).*$"), rf"\1{REDACTED}"),
    (_HEADER_WORDS, re.compile(rf"(?i)(([\"'])(?:{_HEADERS})\2\s*:\s*)([\"'])(?:\\.|(?!\3).)*\3"), rf"\1\3{REDACTED}\3"),
    # "name": "value" / 'name': 'value' / "name": 123456 (JSON, dict and repr text).
    (_NAME_WORDS, re.compile(rf"(?i)(([\"'])(?:{_QUOTED_NAMES})\2\s*:\s*)([\"'])(?:\\.|(?!\3).)*\3"), rf"\1\3{REDACTED}\3"),
    (_NAME_WORDS, re.compile(rf"(?i)(([\"'])(?:otp|password|passwd|token)\2\s*:\s*)-?\d+"), rf"\g<1>{REDACTED}"),
    # name=value in query strings, form bodies and key=value text; the name must start a
    # word, so "status_code=500" or "error_code=x" are left alone.
    (_NAME_WORDS, re.compile(rf"(?i)((?<![A-Za-z0-9_])(?:{_NAMES})(?:%3D|=))(?!\[redacted\])[^&\s\"',;)\]}}]*"), rf"\1{REDACTED}"),
    # Bearer credentials: "Bearer x", and the browser subprotocol list "bearer, x".
    (("bearer",), re.compile(r"(?i)(\bbearer(?:\s*,\s*|\s+))(?![\"'])[^\s,\"']+"), rf"\1{REDACTED}"),
    # The same pair as JSON inside a JSON string (the driver's DEBUG command log: \"password_hash\": \"...\").
    (_NAME_WORDS, re.compile(rf"(?i)(\\[\"'](?:{_QUOTED_NAMES})\\[\"']\s*:\s*\\[\"'])[^\\\"']*"), rf"\1{REDACTED}"),
    # pydantic error text repeats what the client sent: "input_value='hunter22'".
    (("input_value=",), re.compile(r"(input_value=)(?:'(?:\\.|[^'])*'|\"(?:\\.|[^\"])*\"|[^,\]\s]+)"), rf"\1{REDACTED}"),
]
assert all(any(word in name for word in _NAME_WORDS) for name in SECRET_NAMES), "a secret name without its trigger word"


_ANY_TRIGGER = re.compile("|".join(re.escape(w) for w in sorted({w for triggers, _, _ in _RULES for w in triggers})))


def redact(text: str) -> str:
    """`text` with every secret value replaced by "[redacted]"."""
    lowered = text.lower()
    if not _ANY_TRIGGER.search(lowered):
        return text
    for triggers, pattern, replacement in _RULES:
        if any(word in lowered for word in triggers):
            text = pattern.sub(replacement, text)
    return text


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite a record in place: its message (args merged in), its traceback, its stack."""
    try:
        message = record.getMessage()
    except Exception:  # a call site with bad %-args: logging would report it later; keep both parts
        message = f"{record.msg!r} % {record.args!r}"
    record.msg, record.args = redact(message), None
    if record.exc_info:
        if not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


_installed = False


def install() -> None:
    """Redact every log record this process creates, from now on. Idempotent."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        return redact_record(make(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _installed = True


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, on one line. Our own events are JSON already and go out as they are;
    any other record (a library's, a `log.warning("...")`, a traceback) becomes
    {"event": "log", "level", "logger", "message"[, "exc"]}: a log collector never gets a bare line or
    a multi-line traceback. The text is already redacted (the record factory above)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        extra = record.exc_text or record.stack_info
        if not extra and message.startswith("{") and message.endswith("}") and "\n" not in message:
            return message
        line = {"event": "log", "level": record.levelname, "logger": record.name, "message": message}
        if message.startswith("{"):
            try:
                parsed = json.loads(message)
                line = parsed if isinstance(parsed, dict) else line
            except ValueError:
                pass
        if extra:
            line["exc"] = "\n".join(part for part in (record.exc_text, record.stack_info) if part)
        return json.dumps(line, default=str)


def setup_logging(level: str) -> None:
    """The server's logging: one JSON line per record on stdout, secrets redacted."""
    install()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
