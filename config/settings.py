"""Every setting Sheda RT reads, in one pydantic-settings model.

Values come from the environment, then an optional `.env` in the working directory.
A wrong value must stop the process with one readable line, so `load_settings`
turns pydantic's ValidationError into `SettingsError` with a single message.
"""
from __future__ import annotations

import re
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line for the operator."""


def _split_csv(value):
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # HTTP server
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    processes: int = Field(1, ge=1, le=64, description="Worker processes sharing the port (needs REDIS_URL when > 1)")
    shutdown_grace_seconds: float = Field(10.0, ge=0, description="How long in-flight requests may take after SIGTERM")
    trust_proxy_headers: bool = Field(False, description="Take the client address from X-Forwarded-For/X-Real-Ip (only behind a proxy that sets them)")

    # Storage
    data_dir: Path = Path("./data")
    mongodb_uri: Optional[str] = Field(None, description="A real MongoDB; unset starts the embedded database")
    mongodb_db: str = "sheda"
    # [database] the embedded database's operation log (sheda_rt/database/embedded.py, OplogTrimmer)
    embedded_oplog_max_entries: int = Field(100_000, ge=100, le=10_000_000, description="The embedded database keeps at most this many oplog entries (and none older than an hour)")
    embedded_oplog_trim_rows: int = Field(100, ge=0, le=500, description="Trim the embedded database's oplog after about this many chat writes (0: only its own trim every 1,000 writes, one stall of ~22 ms each once full)")
    redis_url: Optional[str] = None
    redis_heartbeat_seconds: float = Field(5.0, gt=0, description="Presence heartbeat; a dead process's users go offline after 3x this")

    # Auth
    jwt_secret: Optional[SecretStr] = Field(None, min_length=32,
                                            description="At least 32 characters; unset: generated once and kept in DATA_DIR/jwt_secret")
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    access_token_minutes: int = Field(30, ge=1)
    refresh_token_days: int = Field(14, ge=1)
    otp_token_minutes: int = Field(5, ge=1)
    bcrypt_rounds: int = Field(12, ge=4, le=16, description="bcrypt cost; tests use 4")
    otp_minutes: int = Field(10, ge=1)
    pending_registration_hours: int = Field(24, ge=1, le=24 * 365, description="A registration never verified holds its username and phone this long; then another registration wanting them removes it")
    login_max_failures: int = Field(5, ge=1, description="Wrong passwords per account and address per window; the next try gets 429")
    login_window_minutes: int = Field(15, ge=1)
    login_max_failures_per_ip: int = Field(20, ge=1, description="Failed logins per address per window, whatever the accounts (credential stuffing)")
    registrations_per_ip_per_hour: int = Field(20, ge=1, le=1_000_000, description="Registrations one client address may make in any hour (each mails a code; 429 after)")
    otp_sends_per_ip_per_hour: int = Field(30, ge=1, le=1_000_000, description="send-otp requests one client address may make in any hour, whatever the emails (429 after)")

    # HTTP conventions
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Comma-separated origins, or *")
    max_json_bytes: int = Field(1_048_576, ge=1024)
    # A request's header block over this gets a JSON 431 (Tornado's own cap, which closes the
    # connection without an answer, is set to HARD_HEADER_BYTES above it).
    max_header_bytes: int = Field(65_536, ge=8192, le=1_048_576)
    max_upload_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=10_000, le=500_000_000,
                                  description="Largest image accepted, in pixels (width x height); more is 413 image_too_large")
    public_base_url: Optional[str] = Field(None, description=(
        "Scheme and host clients reach this server at, e.g. https://api.example.com: media URLs (avatar_url, "
        "image url, file_url) become absolute, so a web app on another origin can load them; unset: /media/... paths"))

    # Email
    smtp_host: Optional[str] = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: Optional[str] = None
    smtp_password: Optional[SecretStr] = None
    smtp_starttls: bool = True
    mail_from: str = "Sheda RT <no-reply@sheda.local>"

    # Real time
    ws_ping_interval: float = Field(25.0, gt=0)
    ws_ping_timeout: float = Field(20.0, gt=0)
    ws_max_message_bytes: int = Field(64 * 1024, ge=1024)
    ws_rate_burst: int = Field(20, ge=1)
    ws_rate_per_second: float = Field(5.0, gt=0)
    ws_rate_strikes_before_close: int = Field(20, ge=1)
    ws_control_burst: int = Field(60, ge=1)  # pings, read receipts, typing, sync: their own budget, per socket
    ws_control_per_second: float = Field(10.0, gt=0)
    ws_outbound_buffer_bytes: int = Field(1024 * 1024, ge=4096)
    ws_compression: bool = False
    # [realtime] open connections (sockets and event streams) one user may hold in one process: one
    # user's reconnect loop or stolen token cannot use up the process's file descriptors (handlers/chat.py)
    ws_max_sockets_per_user: int = Field(32, ge=1, le=10_000, description=(
        "Open sockets and event streams one user may hold in one process; one more handshake is 429 too_many_sockets"))
    # [realtime] GET /api/v1/events/stream (Server-Sent Events): a comment line this often keeps proxies
    # from closing an idle stream and lets the client notice a dead one
    sse_heartbeat_seconds: float = Field(15.0, gt=0, le=3600)
    # [realtime] channels of things (property:<id>) one socket may watch at once (sheda_rt/realtime/channels.py)
    ws_max_subscriptions: int = Field(100, ge=1, le=10_000, description="Channels one socket may subscribe to at once")
    # [realtime] how often open sockets are checked for an expired token (closed with 4401)
    ws_expiry_sweep_seconds: float = Field(1.0, gt=0, le=60, description="How often connections whose token expired are closed (4401)")
    # [chat] 0: a batch starts as soon as a pipeline slot is free and takes whatever queued meanwhile
    # (group commit by back-pressure). compare.sh, quiet machine, 2 ms -> 0: closed loop 2,525 -> 3,317
    # msgs/s, p50 / p99 at 1,000/s 9.6 / 52.8 -> 5.9 / 18.3 ms.
    chat_batch_window_ms: float = Field(0.0, ge=0)
    chat_batch_max: int = Field(500, ge=1)
    # [chat] resends recognised within this window (see sheda_rt/chat/idempotency.py): the original is at
    # most this old and among the newest CHAT_IDEMPOTENCY_MESSAGES keyed messages of its conversation
    chat_idempotency_seconds: float = Field(600.0, ge=1)
    chat_idempotency_messages: int = Field(1000, ge=10, le=100_000)
    chat_pipeline_depth: int = Field(3, ge=1, le=8)  # [chat] batches in flight in one process
    # [chat] attachments (sheda_rt/chat/attachments.py): private files under DATA_DIR/attachments
    chat_attachment_max_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024, description="Largest chat attachment (image or PDF); more is 413")
    chat_attachment_url_seconds: int = Field(3600, ge=60, le=7 * 86400, description="How long a signed attachment link in a frame or row stays valid (at least)")
    chat_attachment_unsent_hours: float = Field(24.0, gt=0, description="An uploaded attachment not sent in a message within this is deleted")
    chat_attachment_cleanup_minutes: float = Field(60.0, gt=0, description="How often unsent attachments are looked for")
    chat_attachment_max_pending: int = Field(50, ge=1, le=100_000, description="Uploads one user may have not sent yet; one more is 409")
    chat_edit_window_seconds: float = Field(900.0, ge=0, le=31_536_000, description="How long after sending the sender may edit a message (sheda_rt/chat/edits.py)")  # [edits]
    # [realtime] the resumable event stream (sheda_rt/realtime/stream.py): events other than chat messages
    # (receipts, notifications, appointment.* / contract.* ...) are replayable this long; messages forever
    event_retention_days: float = Field(30.0, gt=0, description="Events other than messages stay replayable this long; older positions answer sync.reset")
    event_prune_interval_minutes: float = Field(60.0, gt=0, description="How often events older than EVENT_RETENTION_DAYS are deleted")
    typing_interval_seconds: float = Field(1.0, ge=0)

    # Jobs
    contract_expiry_interval_hours: float = Field(24.0, gt=0)
    # [builders] bookings of off-plan units (sheda_rt/builders/bookings.py)
    booking_hold_hours: float = Field(48.0, gt=0, le=24 * 90, description="How long a new booking reserves its unit pending the booking payment")
    booking_reminder_days: float = Field(3.0, ge=0, le=60, description="Installments falling due within this many days get a reminder (client and builder)")
    booking_job_interval_minutes: float = Field(60.0, gt=0, le=24 * 60, description="How often lapsed holds expire and installments are reminded / marked overdue")
    builder_model_max_bytes: int = Field(50 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024, description="Largest 3D model (glb, gltf, usdz) a builder uploads; more is 413")
    # [jobs] the durable job queue (sheda_rt/jobs/)
    job_poll_seconds: float = Field(1.0, gt=0, le=3600, description="How often each process looks for due jobs")
    job_lease_seconds: float = Field(60.0, ge=1, description="A claimed job's lease; renewed while it runs, a dead process's lapses after this")
    job_max_attempts: int = Field(5, ge=1, le=100, description="Failed attempts before a job is marked failed (GET /api/v1/admin/jobs?status=failed)")
    job_backoff_seconds: float = Field(5.0, ge=0, description="Delay after the first failure; doubled per attempt")
    job_backoff_max_seconds: float = Field(3600.0, ge=0, description="Longest delay between attempts")
    # [push] devices and the Web Push dispatcher (sheda_rt/push/)
    push_grace_seconds: float = Field(10.0, ge=0, le=3600, description="A message to a user with no open socket is pushed after this, unless read meanwhile")
    push_allow_local_endpoints: bool = Field(False, description="Allow push endpoints on loopback/private addresses and http (tests and development only)")
    push_max_devices_per_user: int = Field(20, ge=1, le=1000)
    push_ttl_seconds: int = Field(86400, ge=0, le=2419200, description="How long a push may wait (quiet hours, a provider's retries) before it is dropped; a push service keeps an undelivered one only for what is left of that")
    vapid_private_key: Optional[SecretStr] = Field(None, description="P-256 private key, PEM or base64url; unset: generated once in DATA_DIR/vapid_private_key.pem")
    vapid_subject: str = Field("mailto:admin@sheda.local", pattern=r"^(mailto:[^\s]+|https://[^\s]+)$", description="The VAPID `sub` claim: how push services reach the operator")
    # [push] FCM HTTP v1 (sheda_rt/push/fcm.py): enabled by a service account; the project id is the account's
    fcm_service_account_file: Optional[Path] = Field(None, description="A Firebase service-account JSON file; unset (and no FCM_SERVICE_ACCOUNT_JSON): FCM devices are not pushed to")
    fcm_service_account_json: Optional[SecretStr] = Field(None, description="The same service-account JSON, inline (instead of the file)")
    fcm_base_url: str = Field("https://fcm.googleapis.com", pattern=r"^https?://[^\s?#]+$", description="FCM API root (tests point it at a local server)")
    # [push] APNs over HTTP/2 with token auth (sheda_rt/push/apns.py): enabled by the key file with its ids and the topic
    apns_key_file: Optional[Path] = Field(None, description="The APNs auth key (.p8, ES256) from the Apple developer account; unset: APNs devices are not pushed to")
    apns_key_id: Optional[str] = Field(None, pattern=r"^[A-Z0-9]{10}$", description="The .p8 key's 10-character Key ID")
    apns_team_id: Optional[str] = Field(None, pattern=r"^[A-Z0-9]{10}$", description="The 10-character Team ID the key belongs to")
    apns_topic: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9.\-]{1,155}$", description="The app's bundle id (apns-topic)")
    apns_base_url: str = Field("https://api.push.apple.com", pattern=r"^https?://[^\s?#]+$", description="APNs for devices registered with environment=production")
    apns_sandbox_base_url: str = Field("https://api.sandbox.push.apple.com", pattern=r"^https?://[^\s?#]+$", description="APNs for environment=sandbox devices (development builds)")
    # [reminders] chat email digests (sheda_rt/reminders/digest.py); viewing and contract reminders have fixed times
    digest_offline_minutes: float = Field(15.0, ge=0, le=10080, description="A user offline this long with unread chat messages gets a digest email")
    digest_window_hours: float = Field(3.0, ge=0, le=720, description="At most one digest email per conversation per this many hours")
    appointment_minutes: int = Field(30, ge=5, le=240, description="Viewing slot length; slots start on multiples of it from 00:00 UTC")  # [listings]
    appointment_max_open_per_agent: int = Field(5, ge=1, le=1000, description="Open (pending or confirmed, upcoming) viewings one client may have across one agent's listings (409 too_many_open_viewings after)")  # [listings]
    inquiries_per_ip_per_hour: int = Field(5, ge=1, le=10_000, description="Public inquiries one client address may send in any hour (429 after)")  # [leads]
    # [saved searches] sheda_rt/saved_searches/
    saved_searches_per_user: int = Field(20, ge=1, le=1000, description="Saved searches one user may keep (409 after)")
    saved_search_digest_hour: int = Field(7, ge=0, le=23, description="Hour of the day (UTC) the daily saved-search alert email goes out")
    search_keyword_postings: bool = Field(True, description="Keep, per keyword, a bitmap of the listings carrying it, so a search of several common words fetches the few listings carrying all of them by id instead of reading every listing carrying the rarest of them, at the cost of one small upsert per keyword on every listing write (see README, Benchmarks). Switching it back on re-posts every listing at the next start")  # [listings search]
    guided_refresh_seconds: float = Field(30.0, ge=0, le=3600, description="Guided search: how old each server's catalog of the available listings (the questions' options and counts) may get before a request refreshes it in the background")  # [guided search]

    # [payments] Paystack (issue 18); no secret key: no gateway, the manual bank-transfer flow only
    paystack_secret_key: Optional[SecretStr] = Field(None, description="Paystack secret key (sk_test_... in test mode); unset: POST /payments is 503, the webhook 401")
    paystack_public_key: Optional[str] = Field(None, description="Paystack public key (pk_...), for clients that open the inline checkout")
    paystack_base_url: str = Field("https://api.paystack.co", pattern=r"^https?://[^\s?#]+$", description="Paystack API root (tests point it at a local server)")
    payment_callback_url: Optional[str] = Field(None, pattern=r"^https?://[^\s]+$", description="Where the checkout sends the customer back to")
    payment_reconcile_interval_minutes: float = Field(5.0, gt=0, description="How often payments pending for 30+ minutes are verified with the gateway")
    # [promotions] paid from the agent's wallet (sheda_rt/promotions/); naira, two decimals at most
    promotion_featured_price_per_day: Decimal = Field(Decimal("1000.00"), gt=0, le=Decimal("10000000"), decimal_places=2, description="Price of one day of a featured listing (first in search), naira")
    promotion_featured_max_days: int = Field(30, ge=1, le=365, description="Most days one featured promotion may buy (days of several add up)")
    promotion_bump_price: Decimal = Field(Decimal("500.00"), gt=0, le=Decimal("10000000"), decimal_places=2, description="Price of one bump to the top of the newest-first order, naira")
    promotion_job_interval_minutes: float = Field(1.0, gt=0, le=24 * 60, description="How often featured listings whose days ran out are ended and interrupted promotions finished")
    # [wallet] top-ups through the gateway (POST /payments purpose wallet_topup), whole naira
    wallet_topup_min_naira: int = Field(100, ge=1, le=1_000_000_000, description="Smallest wallet top-up, naira")
    wallet_topup_max_naira: int = Field(5_000_000, ge=1, le=1_000_000_000, description="Largest wallet top-up, naira")
    wallet_topup_max_pending: int = Field(5, ge=1, le=1000, description="Top-up checkouts one user may have pending at once (each is a gateway transaction the reconciliation verifies); beyond, POST /payments is 429 rate_limited with Retry-After")

    @field_validator("wallet_topup_max_naira")
    @classmethod
    def _topup_bounds(cls, value, info):  # [wallet] a maximum under the minimum would refuse every top-up
        low = info.data.get("wallet_topup_min_naira")
        if low is not None and value < low:
            raise ValueError(f"must be at least WALLET_TOPUP_MIN_NAIRA ({low})")
        return value

    # [enhancement] AI image enhancement (sheda_rt/enhancement/): an external service answering over a signed
    # webhook, or, with no service URL, Pillow in-process (auto-contrast, mild sharpening, size normalisation)
    enhancement_service_url: Optional[str] = Field(None, pattern=r"^https?://[^\s?#]+$", description="The external enhancement service's job endpoint (POST); unset: images are enhanced in-process with Pillow")
    enhancement_api_key: Optional[SecretStr] = Field(None, description="Sent to the enhancement service as X-API-Key")
    enhancement_webhook_secret: Optional[SecretStr] = Field(None, min_length=16, description="Shared secret of the service's webhooks (HMAC-SHA256 over '<timestamp>.<body>'); unset: every webhook is 401")
    enhancement_callback_url: Optional[str] = Field(None, pattern=r"^https?://[^\s]+$", description="Webhook URL sent with each job; unset: PUBLIC_BASE_URL + /api/v1/webhooks/image-enhancement, or none (the service's own configuration)")
    enhancement_timeout_hours: float = Field(48.0, gt=0, le=24 * 90, description="A job without a result this long after it started is marked timeout")
    enhancement_sweep_minutes: float = Field(15.0, gt=0, le=24 * 60, description="How often jobs older than ENHANCEMENT_TIMEOUT_HOURS are looked for")
    enhancement_max_result_bytes: int = Field(20 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024, description="Largest enhanced file downloaded from the service; more fails the job")
    enhancement_max_edge: int = Field(2048, ge=64, le=16_384, description="In-process enhancement: the longest side of the enhanced image, in pixels")
    enhancement_submit_wait_seconds: float = Field(5.0, gt=0, le=60, description="How long POST .../enhance waits for the enhancement service to take the image; a slower service is answered 202 at once and the upload goes on (retried by the job queue)")
    enhancement_max_live_per_agent: int = Field(10, ge=1, le=100_000, description="Enhancement jobs live (pending or processing) at once on one agent's listings; beyond, POST .../enhance is 429 rate_limited with Retry-After")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    _upper_log_level = field_validator("log_level", mode="before")(lambda v: v.upper() if isinstance(v, str) else v)  # [accounts] LOG_LEVEL=bogus: one line, not a traceback

    _validate_cors = field_validator("cors_origins", mode="before")(_split_csv)

    @field_validator("mongodb_uri", "redis_url", "jwt_secret", "smtp_host", "smtp_username", "smtp_password",
                     "paystack_secret_key", "paystack_public_key", "payment_callback_url", "vapid_private_key",
                     "fcm_service_account_file", "fcm_service_account_json", "apns_key_file", "apns_key_id", "apns_team_id",
                     "apns_topic", "enhancement_service_url", "enhancement_api_key", "enhancement_webhook_secret",
                     "enhancement_callback_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("public_base_url", mode="before")
    @classmethod
    def _public_base_url(cls, value):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str) or not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value.strip()):
            raise ValueError("must be an http:// or https:// URL such as https://api.example.com")
        return value.strip().rstrip("/")

    @field_validator("host", mode="before")
    @classmethod
    def _host(cls, value):
        # blank was taken (Tornado then listens on every address, which HOST=127.0.0.1 set wrongly never means)
        if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
            raise ValueError("must be an address or host name to listen on, e.g. 0.0.0.0 or 127.0.0.1")
        return value.strip()

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir(cls, value):
        # blank was taken as the working directory: the database, media and outbox spread into it
        if isinstance(value, str) and not value.strip():
            raise ValueError("must name a directory, e.g. ./data")
        return value

    @field_validator("mongodb_db")
    @classmethod
    def _mongodb_db(cls, value):
        # MongoDB's rules for a database name; a bad one was refused only once the database had started, by a
        # line naming the driver's error instead of this setting
        if not re.fullmatch(r'[^/\\. "$*<>:|?\x00]{1,63}', value):
            raise ValueError('must be 1 to 63 characters, none of / \\ . space " $ * < > : | ?')
        return value

    @field_validator("mongodb_uri")
    @classmethod
    def _mongodb_scheme(cls, value):
        if value is not None and not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must be a mongodb:// or mongodb+srv:// URI")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value):
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def db_dir(self) -> Path:
        return self.data_dir / "db"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def attachments_dir(self) -> Path:
        return self.data_dir / "attachments"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    def jwt_secret_value(self) -> str:
        """The configured secret, or one generated on first use and kept under DATA_DIR."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        path = self.data_dir / "jwt_secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        tmp = path.with_name(f"jwt_secret.{secrets.token_hex(6)}.tmp")  # one per writer: racing starts never share it
        tmp.write_text(secret)
        tmp.chmod(0o600)
        try:
            # link() fails if another process won the race; then we read theirs.
            import os
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_text().strip()


SECRET_SETTINGS = {"JWT_SECRET", "SMTP_PASSWORD", "PAYSTACK_SECRET_KEY", "VAPID_PRIVATE_KEY", "ENHANCEMENT_API_KEY",
                   "ENHANCEMENT_WEBHOOK_SECRET"}  # never echoed back in an error line


def load_settings(**overrides) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]).upper() or "settings"
        shown = "<hidden>" if name in SECRET_SETTINGS else repr(first.get("input"))
        raise SettingsError(f"invalid setting {name}: {first['msg']} (got {shown})") from None
