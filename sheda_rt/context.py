"""AppContext: the one owner of shared state (settings, clock, database, stores,
services, hub, jobs), and the one place that wires them. Handlers reach it as
`self.application.ctx`; a service never holds it: it receives the dependencies it
names as (typed) keyword arguments here, so its constructor lists what it uses
(tests/test_architecture.py checks this). Tests build one with a ManualClock to move time."""
from __future__ import annotations

import asyncio
import logging
import math
from functools import partial

from sheda_rt.accounts.auth import AuthService
from sheda_rt.accounts.bank_store import AccountInfoStore
from sheda_rt.accounts.otp_store import OtpStore
from sheda_rt.accounts.refresh_store import RefreshTokenStore
from sheda_rt.accounts.revocations_store import RevocationStore
from sheda_rt.accounts.service import AccountService
from sheda_rt.accounts.tokens import TokenCodec
from sheda_rt.accounts.users_store import UserStore
from sheda_rt.chat.service import ChatService
from sheda_rt.clock import Clock
from sheda_rt.database.connection import connect
from sheda_rt.database.ids import IdAllocator
from sheda_rt.mail.mailer import mailer_from_settings
from sheda_rt.limits import MemoryLimits
from sheda_rt.media.service import MediaService
from sheda_rt.media.store import MediaStore
from sheda_rt.realtime.hub import Hub
from sheda_rt.realtime.turns import LocalTurns, Turns

log = logging.getLogger("sheda.context")


class AppContext:
    def __init__(self, settings, mongodb_uri: str, clock: Clock | None = None, mailer=None):
        self.settings = settings
        self.clock = clock or Clock()
        self.client, self.db = connect(mongodb_uri, settings.mongodb_db)
        self.ids = IdAllocator(self.db)
        self.mailer = mailer or mailer_from_settings(settings)
        self.hub = Hub(clock=self.clock, expiry_sweep_seconds=settings.ws_expiry_sweep_seconds)  # [realtime] token expiry by our clock
        # Shared limits (login throttle, socket rate limits); Redis-backed when REDIS_URL is set.
        self.limits = MemoryLimits()
        # [chat] commit turns: one process's batches take turns by themselves; the chat batcher takes them.
        self.turns: Turns = LocalTurns()
        self.redis_link = None  # [operations] the one Redis client and its state (readiness reports it)
        if settings.redis_url:  # [operations] many processes, one server: fan-out, presence, turns and limits in Redis
            from sheda_rt.realtime.fanout_redis import RedisFanout
            from sheda_rt.realtime.presence import RedisPresence
            from sheda_rt.realtime.redis_link import RedisLink
            from sheda_rt.realtime.turns import RedisTurns
            from sheda_rt.redis_limits import RedisLimits

            self.redis_link = RedisLink(settings.redis_url, settings.mongodb_db)
            fanout = RedisFanout(self.redis_link)
            presence = RedisPresence(self.redis_link, heartbeat_seconds=settings.redis_heartbeat_seconds)
            self.hub = Hub(fanout, presence, clock=self.clock, expiry_sweep_seconds=settings.ws_expiry_sweep_seconds)
            # A turn's release goes out behind that batch's publishes, on the fan-out's pipeline.
            self.turns = RedisTurns(self.redis_link, enqueue_after_publishes=fanout.enqueue_after_publishes, listen=fanout.listen)
            self.limits = RedisLimits(self.redis_link.redis, settings.mongodb_db)
        from sheda_rt.realtime.channels import Channels  # [realtime] channels of things: kinds register below

        self.channels = Channels(self.hub, settings.ws_max_subscriptions)
        self.media = MediaStore(settings.media_dir, settings.max_upload_bytes, settings.max_image_pixels)
        self.media_uploads = MediaService(self.media)  # the admin upload route's service (others store through theirs)
        self.tokens = TokenCodec(settings.jwt_secret_value(), settings.jwt_algorithm, self.clock)

        # Stores: one per collection. Every store with indexes is listed in `stores`.
        self.users = UserStore(self.db, self.ids)
        self.revocations = RevocationStore(self.db)
        self.otps = OtpStore(self.db, settings.jwt_secret_value())  # accounts: hashed one-time codes
        self.refresh_tokens = RefreshTokenStore(self.db)  # accounts: refresh rotation
        self.account_info = AccountInfoStore(self.db)  # accounts: agents' bank details
        self.stores = [self.users, self.revocations, self.otps, self.refresh_tokens, self.account_info]
        # One-time data backfills the features need, run at start once every store's indexes exist (each keeps
        # its own marker in `meta`, so only the first start of a version does the work). A store's own (facets,
        # postings) run in its ensure_indexes.
        self.backfills: list = []

        # Services: the business rules. Each gets the dependencies it names, never this context.
        self.auth = AuthService(self.tokens, self.users, self.revocations)
        # [push] devices and settings come first: accounts (logout) and chat (stored, read) report to
        # it; its dispatcher is attached once the job queue exists (_install_push_dispatch).
        self._install_push()
        self.accounts = AccountService(users=self.users, tokens=self.tokens, otps=self.otps, refresh_tokens=self.refresh_tokens,
                                       revocations=self.revocations, account_info=self.account_info, clock=self.clock,
                                       settings=settings, mailer=self.mailer, limits=self.limits, hub=self.hub, push=self.push,
                                       media=self.media)

        # Background jobs (PeriodicCallbacks) registered by features; started by the server.
        self.jobs: list = []
        # Coroutines run at shutdown before connections close (the chat batcher flushes here).
        self.drain_hooks: list = []
        # REST requests being handled now; shutdown waits for this to empty (bounded).
        self.inflight: set = set()
        # [blocks] who may not reach whom: the chat, presence and bookings ask it, so it comes first.
        self._install_blocks()
        # [chat] messages, receipts, typing, presence; its group-commit batcher drains at shutdown.
        self._install_stream()
        self.stores.extend(self.chat.stores)
        self.drain_hooks.append(self.chat.drain)
        # [chat] mute and archive per user per conversation; search of one's own messages.
        self._install_chat_manage()
        self._install_chat_attachments()  # [attachments] private files sent in chat messages, and their cleanup job
        # [jobs] the durable job queue: contract expiry and the push dispatcher run on it.
        self._install_job_queue()
        # [categories] admin-managed listing categories (before listings: a listing counts into its category).
        self._install_categories()
        # [listings] properties, favourites, availability, appointments, contracts, notifications, the expiry job;
        # [analytics] listing views and daily counters for agents, built there on the listings' store (before the
        # listings service, which counts views and favourites, and before leads, which count inquiries).
        self._install_marketplace()
        # [guided search] three questions from the live listings (a catalog refreshed in the background), ranked answers.
        self._install_guided_search()
        # [settings] runtime settings admins change while every process runs (bookings and units read them).
        self._install_runtime_settings()
        # [builders] projects, units, payment plans; builders' verification.
        self._install_builders()
        # [leads] public inquiries about listings and projects; the agents' and builders' lead pipeline (after builders).
        self._install_leads()
        # [wallet] naira wallets as a double-entry ledger (before payments: a top-up credits it).
        self._install_wallet()
        # [payments] payments through a gateway (Paystack), its webhook, the reconciliation job.
        self._install_payments()
        # [enhancement] AI enhancement of listing photos: an external service over a signed webhook, or Pillow here.
        self._install_enhancement()
        # [realtime] presence on request; administrators' announcements and disconnects.
        self._install_realtime_api()
        # [moderation] reports and the moderators' queue (acts through chat, listings and accounts).
        self._install_moderation()
        # [reminders] viewing and contract reminders, chat email digests, the emails' unsubscribe link.
        self._install_reminders()
        # [promotions] featured listings and bumps, paid from the agent's wallet; the job ends them and finishes stragglers.
        self._install_promotions()
        # [saved searches] users' saved searches; new listings, relistings and price drops alert them (after reminders' mail).
        self._install_saved_searches()

    def _install_stream(self) -> None:  # [realtime] the chat and the resumable event stream share one sequencer
        from sheda_rt.realtime.events_store import EventStore
        from sheda_rt.realtime.stream import EventRetentionJob, EventStream

        self.event_store = EventStore(self.db)
        self.stores.append(self.event_store)
        self.chat = ChatService(settings=self.settings, clock=self.clock, hub=self.hub, users=self.users, db=self.db, ids=self.ids,
                                limits=self.limits, push=self.push, events=self.event_store, turns=self.turns, blocks=self.blocks)
        self.stream = EventStream(writer=self.chat.batcher, events=self.event_store, message_replay=self.chat.sync,
                                  head=self.chat.batcher.head)
        # [edits] edit, delete, react, delivered receipts: durable events through the chat's sequencer
        from sheda_rt.chat.edits import MessageActions

        self.chat_edits = MessageActions(messages=self.chat.messages, conversations=self.chat.conversations,
                                         submit_event=self.chat.batcher.submit_event, clock=self.clock,
                                         edit_window_seconds=self.settings.chat_edit_window_seconds, blocks=self.blocks)
        # [realtime] connections come and go through one place (both transports); presence is announced in batches
        from sheda_rt.realtime.sessions import PresenceAnnouncer, Sessions

        presence = PresenceAnnouncer(clock=self.clock, touch_last_seen=self.users.touch_last_seen,
                                     peers_of_many=self.blocks.unblocked_peers(self.chat.conversations.peers_of_many),
                                     publish=self.hub.publish_encoded,
                                     went_offline=self.chat.forget_user)
        # A refused handshake is told to wait until every socket of the user whose network vanished then (a
        # phone that reconnected without closing the old one) is gone: the next ping, its timeout, and the
        # 5 s Tornado then waits for the close handshake.
        self.sessions = Sessions(hub=self.hub, presence=presence, channels=self.channels,
                                 max_per_user=self.settings.ws_max_sockets_per_user,
                                 retry_after=math.ceil(self.settings.ws_ping_interval + self.settings.ws_ping_timeout) + 5)
        self.event_retention = EventRetentionJob(self.event_store, self.clock, self.settings.event_retention_days,
                                                 self.settings.event_prune_interval_minutes)
        self.jobs.append(self.event_retention)

    def _install_blocks(self) -> None:  # [blocks]
        from sheda_rt.blocks.service import BlockService
        from sheda_rt.blocks.store import BlockStore

        self.block_store = BlockStore(self.db)
        self.stores.append(self.block_store)
        confirm = None
        if self.redis_link is not None:  # several processes: a block is answered once all of them applied it
            from sheda_rt.blocks.confirm import ConfirmedInvalidation

            confirm = ConfirmedInvalidation(self.redis_link, self.hub.fanout.listen)
        self.blocks = BlockService(self.block_store, users=self.users, hub=self.hub, clock=self.clock, confirm=confirm)

    def _install_moderation(self) -> None:  # [moderation]
        from sheda_rt.moderation.service import ModerationService
        from sheda_rt.moderation.store import ReportStore

        self.report_store = ReportStore(self.db, self.ids)
        self.stores.append(self.report_store)
        self.moderation = ModerationService(self.report_store, users=self.users, properties=self.property_store, chat=self.chat,
                                            messages=self.chat_edits, listings=self.properties, accounts=self.accounts,
                                            notifications=self.notifications, clock=self.clock)

    def _install_chat_attachments(self) -> None:  # [attachments] files under DATA_DIR/attachments, metadata in the database
        from sheda_rt.chat.attachments import AttachmentCleanupJob, AttachmentService, AttachmentStore

        s = self.settings
        self.chat_attachment_store = AttachmentStore(self.db)
        self.stores.append(self.chat_attachment_store)
        self.chat_attachments = AttachmentService(store=self.chat_attachment_store, ids=self.ids, clock=self.clock,
                                                  root=s.attachments_dir, secret=s.jwt_secret_value(),
                                                  max_bytes=s.chat_attachment_max_bytes, max_pixels=s.max_image_pixels,
                                                  url_seconds=s.chat_attachment_url_seconds, max_pending=s.chat_attachment_max_pending,
                                                  public_base_url=s.public_base_url)
        self.chat.attachments = self.chat_attachments  # messages claim them and show their links
        self.chat_edits.discard_attachments = self.chat_attachments.discard  # deleted for everyone: the files go too
        self.drain_hooks.append(self.chat_attachments.drain)  # after the chat's: its last claims are settled
        self.chat_attachment_cleanup = AttachmentCleanupJob(self.chat_attachments, self.chat.messages,
                                                            unsent_hours=s.chat_attachment_unsent_hours,
                                                            interval_minutes=s.chat_attachment_cleanup_minutes)
        self.jobs.append(self.chat_attachment_cleanup)

    def _install_chat_manage(self) -> None:  # [chat] issue 15 §3: no write on the message path (chat/manage.py, chat/search.py)
        from sheda_rt.chat.manage import ConversationManager
        from sheda_rt.chat.search import MessageSearch

        self.chat_manage = ConversationManager(conversations=self.chat.conversations, messages=self.chat.messages, clock=self.clock,
                                               publish=self.stream.publish)
        self.chat_search = MessageSearch(messages=self.chat.messages, conversations=self.chat.conversations,
                                         user_exists=self.chat.user_brief, present=self.chat.present_rows)

    def _install_marketplace(self) -> None:  # [listings]
        from sheda_rt.appointments.service import AppointmentService, AvailabilityService
        from sheda_rt.appointments.store import AppointmentStore, AvailabilityStore
        from sheda_rt.contracts.expiry import ContractExpiryJob
        from sheda_rt.contracts.service import ContractService
        from sheda_rt.contracts.store import ContractStore
        from sheda_rt.listings.service import PropertyService
        from sheda_rt.listings.store import FavouriteStore, PropertyStore
        from sheda_rt.notifications.service import NotificationService
        from sheda_rt.notifications.store import NotificationStore

        self.property_store = PropertyStore(self.db, self.ids, keyword_postings=self.settings.search_keyword_postings)
        self.favourite_store = FavouriteStore(self.db, self.ids)
        self.availability_store = AvailabilityStore(self.db, self.ids)
        self.appointment_store = AppointmentStore(self.db, self.ids)
        self.contract_store = ContractStore(self.db, self.ids)
        self.notification_store = NotificationStore(self.db, self.ids)
        self.stores.extend([self.property_store, self.favourite_store, self.availability_store, self.appointment_store,
                            self.contract_store, self.notification_store])
        self._install_analytics()
        self.notifications = NotificationService(self.notification_store, clock=self.clock, stream=self.stream,
                                                 push=self.push.dispatch)  # [push] stored notifications reach devices too
        self.push.dispatch.notifications = self.notification_store  # [push] one read meanwhile is not pushed
        # [accounts] a pending registration replaced by its email's owner: what was sent to the old registrant goes
        self.accounts.registration_replaced.extend([self.notifications.forget_user, self.event_store.forget_user,
                                                    self.chat.hide_history_from])
        self.properties = PropertyService(self.property_store, self.favourite_store, clock=self.clock, ids=self.ids, media=self.media,
                                          channels=self.channels, categories=self.categories, analytics=self.analytics,
                                          public_base_url=self.settings.public_base_url)
        self.channels.register("property", self.properties.authorize_watch)  # [realtime] property:<id>
        self.availability = AvailabilityService(self.availability_store, clock=self.clock)
        self.appointments = AppointmentService(self.appointment_store, windows=self.availability_store, properties=self.property_store,
                                               notifications=self.notifications, clock=self.clock,
                                               slot_minutes=self.settings.appointment_minutes, blocks=self.blocks,
                                               accounts=self.accounts,
                                               max_open_per_agent=self.settings.appointment_max_open_per_agent)
        self.contracts = ContractService(self.contract_store, properties=self.property_store, appointments=self.appointment_store,
                                         notifications=self.notifications, listings=self.properties, accounts=self.accounts,
                                         clock=self.clock)
        self.contract_expiry = ContractExpiryJob(self.contracts, self.settings.contract_expiry_interval_hours, self.job_runner,
                                                 self.clock)
        self.jobs.append(self.contract_expiry)
        # an agent's account deactivated or reactivated: their listings leave the market or come back (a durable job)
        from sheda_rt.listings.agent_status import AgentListingsFollow

        self.agent_listings = AgentListingsFollow(runner=self.job_runner, listings=self.properties, users=self.users, clock=self.clock,
                                                  meta=self.db["meta"])
        # [appointments] a property rented or sold, or an account deactivated: their open viewings close (a durable job)
        from sheda_rt.appointments.closing import AccountFollowers, ViewingsClosing

        self.viewings_closing = ViewingsClosing(runner=self.job_runner, appointments=self.appointments, properties=self.property_store,
                                                contracts=self.contract_store, users=self.users, clock=self.clock)
        self.contracts.viewings_closing = self.viewings_closing
        self.drain_hooks.append(self.viewings_closing.drain)
        self.accounts.listings_follow = AccountFollowers(self.agent_listings, self.viewings_closing)
        self.drain_hooks.append(self.agent_listings.drain)
        self.backfills.append(self.agent_listings.backfill_inactive)  # accounts deactivated before their listings followed

    def _install_job_queue(self) -> None:  # [jobs]
        from sheda_rt.jobs.store import JobStore

        self.job_store = JobStore(self.db)
        self.stores.append(self.job_store)
        self.job_runner = self._new_job_runner()
        self.jobs.append(self.job_runner)
        self.drain_hooks.append(self.job_runner.drain)
        self._install_push_dispatch()

    def _new_job_runner(self):  # [jobs] a runner on the shared queue: the main one, or a lane of its own for slow kinds
        from sheda_rt.jobs.runner import JobRunner

        s = self.settings
        return JobRunner(self.job_store, self.clock, lease_seconds=s.job_lease_seconds, max_attempts=s.job_max_attempts,
                         backoff_seconds=s.job_backoff_seconds, backoff_max_seconds=s.job_backoff_max_seconds,
                         poll_seconds=s.job_poll_seconds)

    def _install_push(self) -> None:  # [push] devices and settings
        from sheda_rt.push.service import PushService
        from sheda_rt.push.store import DeviceStore, PreferenceStore
        from sheda_rt.push.provider import build_providers
        from sheda_rt.push.vapid import VapidKeys

        self.device_store = DeviceStore(self.db, self.ids)
        self.preference_store = PreferenceStore(self.db)
        self.stores.extend([self.device_store, self.preference_store])
        vapid = VapidKeys.from_settings(self.settings)
        self.push = PushService(self.settings, self.device_store, self.preference_store, self.clock, vapid)
        # By platform: Web Push always, FCM and APNs when configured (one log line for each that is not)
        self.push_providers = build_providers(self.settings, vapid)

    def _install_push_dispatch(self) -> None:  # [push] the dispatcher, on the job queue; it reads chat, which reports to push
        from sheda_rt.push.dispatch import Dispatcher
        from sheda_rt.push.presence import Presence

        self.push.dispatch = Dispatcher(self.settings, self.push, self.chat, Presence(self.hub), self.job_runner, self.push_providers,
                                        self.clock)
        self.drain_hooks.append(self.push.dispatch.drain)

    def _install_reminders(self) -> None:  # [reminders] on the job queue; they push through the dispatcher and mail
        from sheda_rt.push.presence import Presence
        from sheda_rt.reminders.digest import ChatDigests, DigestStore
        from sheda_rt.reminders.email import EmailSender
        from sheda_rt.reminders.service import ReminderService, calendar_domain
        from sheda_rt.reminders.unsubscribe import UnsubscribeLinks
        from sheda_rt.reminders.unsubscribe_service import UnsubscribeService

        s = self.settings
        links = UnsubscribeLinks(s.jwt_secret_value(), s.public_base_url or f"http://localhost:{s.port or 8000}")
        email = self.email_sender = EmailSender(self.mailer, links)  # [saved searches] their daily digest mails through it too
        self.unsubscribe = UnsubscribeService(links=links, preferences=self.push)
        self.reminders = ReminderService(runner=self.job_runner, appointments=self.appointment_store, contracts=self.contract_store,
                                         properties=self.property_store, users=self.users, preferences=self.push,
                                         push=self.push.dispatch, email=email, clock=self.clock,
                                         calendar_domain=calendar_domain(s.public_base_url))
        self.appointments.reminders = self.reminders  # confirm makes them; cancel, reject, reschedule cancel them
        self.contracts.reminders = self.reminders  # activation makes them; an early end cancels them
        self.digest_store = DigestStore(self.db)
        self.stores.append(self.digest_store)
        self.digests = ChatDigests(runner=self.job_runner, store=self.digest_store, chat=self.chat, presence=Presence(self.hub),
                                   users=self.users, preferences=self.push, email=email, clock=self.clock,
                                   offline_minutes=s.digest_offline_minutes, window_hours=s.digest_window_hours)
        self.push.digests = self.digests  # every stored message arms its receiver's digest
        self.drain_hooks.append(self.digests.drain)

    def _install_saved_searches(self) -> None:  # [saved searches] on the job queue; they notify, push and mail as reminders do
        from sheda_rt.saved_searches.job import AlertDigests, ListingAlerts, PendingAlertSweep
        from sheda_rt.saved_searches.service import SavedSearchService
        from sheda_rt.saved_searches.store import AlertStore, PendingAlerts, SavedSearchStore

        s = self.settings
        self.saved_search_store = SavedSearchStore(self.db, self.ids)
        self.saved_search_alert_store = AlertStore(self.db)
        self.saved_search_pending = PendingAlerts(self.db)  # listings' alert_pending markers
        self.stores.extend([self.saved_search_store, self.saved_search_alert_store, self.saved_search_pending])
        self.saved_searches = SavedSearchService(self.saved_search_store, plan=self.properties.plan, clock=self.clock,
                                                 guided_catalog=self.guided_catalog, max_per_user=s.saved_searches_per_user,
                                                 categories=self.categories)
        self.saved_search_digests = AlertDigests(runner=self.job_runner, alerts=self.saved_search_alert_store,
                                                 searches=self.saved_search_store, listings=self.property_store, users=self.users,
                                                 preferences=self.push, email=self.email_sender, clock=self.clock,
                                                 hour_utc=s.saved_search_digest_hour, blocks=self.blocks)
        self.listing_alerts = ListingAlerts(runner=self.job_runner, searches=self.saved_search_store, saved=self.saved_searches,
                                            alerts=self.saved_search_alert_store, listings=self.property_store,
                                            notifications=self.notifications, push=self.push.dispatch,
                                            digests=self.saved_search_digests, clock=self.clock, push_ttl_seconds=s.push_ttl_seconds,
                                            pending=self.saved_search_pending, users=self.users, blocks=self.blocks)
        self.properties.listing_alerts = self.listing_alerts.listing_changed  # new listings, relistings, price drops
        self.drain_hooks.append(self.listing_alerts.drain)
        # a change whose match job a dying process never queued is queued by this sweep (its marker on the listing)
        self.saved_search_sweep = PendingAlertSweep(self.listing_alerts, self.saved_search_pending, self.job_runner)
        self.backfills.append(self.saved_searches.refile_location_alerts)  # searches filed under an unfolded location word
        self.jobs.append(self.saved_search_sweep)

    def _install_runtime_settings(self) -> None:  # [settings]
        from sheda_rt.builders.service import MAX_UNITS_PER_PROJECT
        from sheda_rt.runtime_settings.models import DEFAULT_BOOKING_PERCENT
        from sheda_rt.runtime_settings.service import RuntimeSettingsService, RuntimeSettingsStore

        self.runtime_settings_store = RuntimeSettingsStore(self.db, self.ids)
        self.stores.append(self.runtime_settings_store)
        defaults = {"booking_hold_hours": self.settings.booking_hold_hours, "booking_percent": DEFAULT_BOOKING_PERCENT,
                    "max_units_per_project": MAX_UNITS_PER_PROJECT, "maintenance_banner": None}
        confirm = None
        if self.redis_link is not None:  # several processes: a change is answered once all of them dropped their copy
            from sheda_rt.blocks.confirm import ConfirmedInvalidation

            confirm = ConfirmedInvalidation(self.redis_link, self.hub.fanout.listen, name="runtime_settings")
        self.runtime_settings = RuntimeSettingsService(self.runtime_settings_store, defaults=defaults, hub=self.hub, clock=self.clock,
                                                       confirm=confirm)

    def _install_builders(self) -> None:  # [builders]
        from sheda_rt.builders.service import BuilderService, ProjectService
        from sheda_rt.builders.store import PaymentPlanStore, ProjectStore, UnitBatchLocks, UnitStore

        self.project_store = ProjectStore(self.db, self.ids)
        self.unit_store = UnitStore(self.db, self.ids)
        self.unit_batch_locks = UnitBatchLocks(self.db)
        self.payment_plan_store = PaymentPlanStore(self.db, self.ids)
        self.stores.extend([self.project_store, self.unit_store, self.unit_batch_locks, self.payment_plan_store])
        self.projects = ProjectService(self.project_store, self.unit_store, self.unit_batch_locks, self.payment_plan_store,
                                       users=self.users, notifications=self.notifications, media=self.media, clock=self.clock,
                                       channels=self.channels, runtime_settings=self.runtime_settings.get)
        self.builders = BuilderService(self.projects, users=self.users, notifications=self.notifications, media=self.media,
                                       clock=self.clock)
        # [realtime] project:<id>: any signed-in user watches a published project (its feed is public); drafts only
        # their builder and admins
        self.channels.register("project", self.projects.authorize_watch)
        # a builder's account deactivated or switched away: their published projects leave the lists, and come back
        # with it (the agents' listings' mechanism: listings/agent_status.py, a durable job)
        from sheda_rt.builders.builder_status import BuilderProjectsFollow

        self.builder_projects = BuilderProjectsFollow(runner=self.job_runner, projects=self.projects, users=self.users,
                                                      clock=self.clock, meta=self.db["meta"])
        if self.accounts.listings_follow is not None:
            self.accounts.listings_follow.add(self.builder_projects)
        self.drain_hooks.append(self.builder_projects.drain)
        self.backfills.append(self.builder_projects.backfill_inactive)  # builders who left before their projects followed
        self._install_project_models()
        self._install_bookings()

    def _install_project_models(self) -> None:  # [builders] 3D models (glb, gltf, usdz) under DATA_DIR/models
        from sheda_rt.builders.models3d import ModelService, ModelStore

        self.project_model_store = ModelStore(self.db)
        self.stores.append(self.project_model_store)
        self.project_models = ModelService(store=self.project_model_store, projects=self.projects, ids=self.ids, clock=self.clock,
                                           root=self.settings.data_dir / "models", max_bytes=self.settings.builder_model_max_bytes)
        self.projects.model_summary = self.project_model_store.summary  # the `models` of GET /projects/{id}

    def _install_bookings(self) -> None:  # [builders] bookings with installment schedules, construction progress and updates
        from sheda_rt.builders.bookings import BookingJob, BookingService, BookingStore
        from sheda_rt.builders.progress import ProgressService, ProgressStore, UpdateStore

        s = self.settings
        self.booking_store = BookingStore(self.db, self.ids)
        self.progress_store = ProgressStore(self.db)
        self.update_store = UpdateStore(self.db, self.ids)
        self.stores.extend([self.booking_store, self.progress_store, self.update_store])
        self.bookings = BookingService(self.booking_store, projects=self.projects, project_store=self.project_store,
                                       units=self.unit_store, plans=self.payment_plan_store, notifications=self.notifications,
                                       clock=self.clock, hold_hours=s.booking_hold_hours, reminder_days=s.booking_reminder_days,
                                       runtime_settings=self.runtime_settings.get,
                                       builder_active=partial(self.accounts.is_active_as, user_type="builder"))
        self.construction = ProgressService(self.progress_store, self.update_store, projects=self.projects,
                                            bookings=self.booking_store, notifications=self.notifications, clock=self.clock)
        self.booking_job = BookingJob(self.bookings, s.booking_job_interval_minutes, self.job_runner, self.clock)
        from sheda_rt.builders.change_requests import ChangeRequestService, ChangeRequestStore  # [builders] change requests
        self.change_request_store = ChangeRequestStore(self.db, self.ids)
        self.stores.append(self.change_request_store)
        self.change_requests = ChangeRequestService(self.change_request_store, bookings=self.booking_store,
                                                    notifications=self.notifications, clock=self.clock)
        self.jobs.append(self.booking_job)

    def _install_payments(self) -> None:  # [payments]
        from datetime import timedelta

        from sheda_rt.payments.gateway import gateway_from_settings
        from sheda_rt.payments.reconcile import PaymentReconciliationJob, PaymentReverification
        from sheda_rt.payments.service import PaymentService
        from sheda_rt.payments.store import PaymentStore
        from sheda_rt.payments.installments import InstallmentPaymentTarget
        from sheda_rt.payments.targets import ContractPaymentTarget
        from sheda_rt.wallet.topup import WalletTopupTarget

        self.payment_gateway = gateway_from_settings(self.settings)
        self.payment_store = PaymentStore(self.db, self.ids)
        self.stores.append(self.payment_store)
        # What a payment may pay for, by purpose (sheda_rt/payments/targets.py): one entry per purpose.
        self.payment_targets = {
            "wallet_topup": WalletTopupTarget(wallet=self.wallet, min_naira=self.settings.wallet_topup_min_naira,
                                              max_naira=self.settings.wallet_topup_max_naira,
                                              max_pending=self.settings.wallet_topup_max_pending,
                                              notifications=self.notifications),  # [wallet]
            "contract": ContractPaymentTarget(contracts=self.contracts, contract_store=self.contract_store),
            "installment": InstallmentPaymentTarget(bookings=self.bookings),
        }
        self.payments = PaymentService(self.payment_store, self.payment_gateway, targets=self.payment_targets,
                                       users=self.users, clock=self.clock, callback_url=self.settings.payment_callback_url,
                                       reconcile_every=timedelta(minutes=self.settings.payment_reconcile_interval_minutes))
        self.bookings.on_cancelled = self.payments.booking_cancelled  # installments paid, then cancelled: a refund is due
        self.payment_reconciliation = PaymentReconciliationJob(self.payments, self.settings.payment_reconcile_interval_minutes)
        # A charge.success its verify does not confirm yet: verified again within minutes, on the job queue.
        self.payment_reverification = PaymentReverification(self.payments, self.job_runner, self.clock)
        self.payments.on_undecided = self.payment_reverification.schedule
        self.jobs.append(self.payment_reconciliation)

    def _install_wallet(self) -> None:  # [wallet]
        from sheda_rt.wallet.ledger import LedgerStore
        from sheda_rt.wallet.service import WalletService

        self.ledger = LedgerStore(self.db, self.ids)
        self.stores.append(self.ledger)
        self.wallet = WalletService(self.ledger, clock=self.clock)

    def _install_promotions(self) -> None:  # [promotions] after listings and the wallet, which it uses
        from sheda_rt.promotions.job import PromotionJob
        from sheda_rt.promotions.service import PromotionService
        from sheda_rt.promotions.store import PromotionStore

        s = self.settings
        self.promotion_store = PromotionStore(self.db, self.ids)
        self.stores.append(self.promotion_store)
        self.promotions = PromotionService(self.promotion_store, properties=self.property_store, listings=self.properties,
                                           wallet=self.wallet, clock=self.clock,
                                           featured_price_per_day=s.promotion_featured_price_per_day,
                                           bump_price=s.promotion_bump_price, featured_max_days=s.promotion_featured_max_days)
        self.wallet.on_refund("spend:promotion", self.promotions.refunded)  # an admin's refund of a promotion's spend ends it
        self.promotion_job = PromotionJob(self.promotions, s.promotion_job_interval_minutes)
        self.jobs.append(self.promotion_job)

    def _install_enhancement(self) -> None:  # [enhancement] jobs on listing images, the webhook, the timeout sweep
        from sheda_rt.enhancement.client import EnhancementClient
        from sheda_rt.enhancement.service import WEBHOOK_PATH, EnhancementService
        from sheda_rt.enhancement.store import EnhancementStore
        from sheda_rt.enhancement.sweep import EnhancementTimeoutSweep

        s = self.settings
        self.enhancement_client = None
        if s.enhancement_service_url:
            key = s.enhancement_api_key.get_secret_value() if s.enhancement_api_key else None
            self.enhancement_client = EnhancementClient(s.enhancement_service_url, key)
        callback = s.enhancement_callback_url or (s.public_base_url + WEBHOOK_PATH if s.public_base_url else None)
        self.enhancement_store = EnhancementStore(self.db, self.ids)
        self.stores.append(self.enhancement_store)
        # Enhanced files go next to the originals, with their own byte cap (a service may return a larger file).
        results = MediaStore(s.media_dir, s.enhancement_max_result_bytes, s.max_image_pixels)
        # The in-process enhancer's own lane on the queue: a runner runs one job at a time and a Pillow run holds it for
        # seconds; the main runner walks past this kind, so pushes, alerts and reminders never wait behind a photo.
        self.media_job_runner = self._new_job_runner()
        self.jobs.append(self.media_job_runner)
        self.drain_hooks.append(self.media_job_runner.drain)
        self.enhancement = EnhancementService(
            self.enhancement_store, listings=self.properties, properties=self.property_store, media=self.media, results=results,
            client=self.enhancement_client, runner=self.media_job_runner, clock=self.clock,
            webhook_secret=s.enhancement_webhook_secret.get_secret_value() if s.enhancement_webhook_secret else None,
            callback_url=callback, timeout_hours=s.enhancement_timeout_hours, max_edge=s.enhancement_max_edge,
            max_result_bytes=s.enhancement_max_result_bytes, max_live_per_agent=s.enhancement_max_live_per_agent,
            submit_wait_seconds=s.enhancement_submit_wait_seconds)
        self.enhancement_sweep = EnhancementTimeoutSweep(self.enhancement, s.enhancement_sweep_minutes)
        self.jobs.append(self.enhancement_sweep)

    def _install_categories(self) -> None:  # [categories]
        from sheda_rt.categories.service import CategoryService
        from sheda_rt.categories.store import CategoryStore

        self.category_store = CategoryStore(self.db, self.ids)
        self.stores.append(self.category_store)
        self.categories = CategoryService(self.category_store, self.clock)

    def _install_analytics(self) -> None:  # [analytics]
        from sheda_rt.analytics.service import AnalyticsService
        from sheda_rt.analytics.store import ListingStatsStore

        self.listing_stats = ListingStatsStore(self.db)
        self.stores.append(self.listing_stats)
        self.analytics = AnalyticsService(self.listing_stats, db=self.db, properties=self.property_store, clock=self.clock)
        from sheda_rt.metrics import ListingGauges

        # Business gauges for /metrics (active listings by type), from the search's facet sample.
        self.listing_gauges = ListingGauges(self.property_store.stats)

    def _install_guided_search(self) -> None:  # [guided search]
        from sheda_rt.guided.catalog import GuidedCatalog
        from sheda_rt.guided.service import GuidedSearchService

        self.guided_catalog = GuidedCatalog(self.db, clock=self.clock, refresh_seconds=self.settings.guided_refresh_seconds)
        self.stores.append(self.guided_catalog)  # its index on properties.updated_at: the refreshes read only what changed
        self.drain_hooks.append(self.guided_catalog.drain)  # a background refresh still reading stops at shutdown
        self.guided = GuidedSearchService(self.guided_catalog, listings=self.properties, store=self.property_store, clock=self.clock)

    def _install_leads(self) -> None:  # [leads]
        from sheda_rt.leads.service import LeadService
        from sheda_rt.leads.store import LeadStore

        self.lead_store = LeadStore(self.db, self.ids)
        self.stores.append(self.lead_store)
        self.leads = LeadService(self.lead_store, properties=self.properties, notifications=self.notifications, chat=self.chat,
                                 limits=self.limits, ids=self.ids, clock=self.clock, analytics=self.analytics,
                                 per_ip_per_hour=self.settings.inquiries_per_ip_per_hour, blocks=self.blocks,
                                 projects=self.projects, builder_active=partial(self.accounts.is_active_as, user_type="builder"))

    def _install_realtime_api(self) -> None:  # [realtime]
        from sheda_rt.realtime.announcements import RealtimeAdmin
        from sheda_rt.realtime.presence_query import PresenceQuery

        self.presence_query = PresenceQuery(self.hub, self.users, self.chat.conversations, blocks=self.blocks)
        self.realtime_admin = RealtimeAdmin(self.hub, self.users, self.notifications, self.clock, push=self.push.dispatch)

    async def ensure_indexes(self) -> None:
        for store in self.stores:
            await store.ensure_indexes()

    async def start(self) -> None:
        await self.ensure_indexes()
        for backfill in self.backfills:
            await backfill()
        await self.stream.start()
        await self.hub.start()

    async def readiness(self) -> dict[str, str]:
        """What /health/ready reports: each dependency's state."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.db.command("ping"), 2.0)
            checks["database"] = "ok"
        except Exception as exc:  # any failure means "not ready", never a 500
            checks["database"] = f"down: {type(exc).__name__}"
        if self.redis_link is not None:
            checks["redis"] = await self.redis_link.health()
        return checks

    async def drain(self) -> None:
        """Before connections close: let features finish what they accepted."""
        for hook in self.drain_hooks:
            await hook()
        await self.sessions.close_all(1001, "server shutting down")  # after the features' acks went out

    async def close(self) -> None:
        await self.hub.stop()
        if self.redis_link is not None:  # after the parts that use it stopped
            await self.redis_link.close()
        if self.payment_gateway is not None:  # [payments] its HTTP connections
            await self.payment_gateway.close()
        if self.enhancement_client is not None:  # [enhancement] its HTTP connections
            await self.enhancement_client.aclose()
        for provider in self.push_providers.values():  # [push] their HTTP connections
            await provider.aclose()
        await self.client.close()
