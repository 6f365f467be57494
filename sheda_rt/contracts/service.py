"""Payment to contract, following the seed's flow.

    POST /contracts/{property_id} (client, with a CONFIRMED viewing)  -> awaiting_payment
    awaiting_payment --payment-sent (client)-->      payment_pending
    payment_pending  --decline-payment (agent)-->    awaiting_payment
    payment_pending  --confirm-payment (agent)-->    active   (property rented / sold)
    awaiting_payment | payment_pending --cancel (client)--> cancelled
    active --expire (the job when end_date <= now, or an admin)--> expired (property available)

The amount is the listing's price when the contract is created; the type is the
listing's listing_type. Rentals need term_months (1-120); for a sale it is a 422.
start_date/end_date are provisional until the agent confirms the payment: the
term starts at confirmation (end_date = start + term_months, calendar months).

Never two active contracts on one property: confirm-payment first moves the
property `available -> rented|sold` with a conditional update (only one request
can win it), then moves the contract `payment_pending -> active`; if that second
step loses (the client cancelled meanwhile) the property is handed back. When a
contract becomes active, the other open contracts on that property are
cancelled (their clients are told).

Expiry is exactly-once per contract even with several processes running the
job: each contract moves `active -> expired` in one conditional update with the
expected state in the filter; only the caller that made that move releases the
property and emits the event.
"""
from __future__ import annotations

import calendar
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from sheda_rt.clock import format_ts
from sheda_rt.contracts.store import OPEN_STATES
from sheda_rt.errors import Conflict, NotFound, ValidationFailed
from sheda_rt.listings.money import format_money
from sheda_rt.listings.service import is_admin
from sheda_rt.metrics import CONTRACTS_EXPIRED

if TYPE_CHECKING:  # types only: the context wires these in (runtime imports here would make cycles)
    from sheda_rt.accounts.service import AccountService
    from sheda_rt.appointments.store import AppointmentStore
    from sheda_rt.clock import Clock
    from sheda_rt.contracts.store import ContractStore
    from sheda_rt.listings.service import PropertyService
    from sheda_rt.listings.store import PropertyStore
    from sheda_rt.notifications.service import NotificationService
    from sheda_rt.reminders.service import ReminderService

log = logging.getLogger("sheda.contracts")


def add_months(start: datetime, months: int) -> datetime:
    """Calendar months; the day is clamped (31 Jan + 1 month = 28/29 Feb)."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def contract_view(doc: dict) -> dict:
    return {
        "id": doc["_id"],
        "property_id": doc["property_id"],
        "property_title": doc.get("property_title"),
        "client_id": doc["client_id"],
        "agent_id": doc["agent_id"],
        "appointment_id": doc.get("appointment_id"),
        "contract_type": doc["contract_type"],
        "amount": format_money(doc["amount"]),
        "currency": doc.get("currency", "NGN"),
        "term_months": doc.get("term_months"),
        "status": doc["status"],
        "is_active": doc["status"] == "active",
        "start_date": format_ts(doc.get("start_date")),
        "end_date": format_ts(doc.get("end_date")),
        "account_details": doc.get("account_details"),
        "created_at": format_ts(doc["created_at"]),
        "updated_at": format_ts(doc["updated_at"]),
        "payment_sent_at": format_ts(doc.get("payment_sent_at")),
        "activated_at": format_ts(doc.get("activated_at")),
        "cancelled_at": format_ts(doc.get("cancelled_at")),
        "expired_at": format_ts(doc.get("expired_at")),
    }


class ContractService:
    def __init__(self, store: ContractStore, *, properties: PropertyStore, appointments: AppointmentStore,
                 notifications: NotificationService, listings: PropertyService, accounts: AccountService, clock: Clock,
                 reminders: ReminderService | None = None):
        self.store = store
        self.properties = properties
        self.appointments = appointments
        self.notifications = notifications
        self.listings = listings  # announces a listing's status change (rented, sold, available again) to its watchers
        self.accounts = accounts  # the agent's bank details, copied into a new contract
        self.clock = clock
        self.reminders = reminders  # a rental's end reminders: made on activation, cancelled when it ends early
        self.viewings_closing = None  # [appointments] set by the context: the property's other open viewings close on activation

    async def _account_details(self, agent_id: int) -> dict | None:
        info = await self.accounts.account_info(agent_id)
        if not info:
            return None
        return {k: info.get(k) for k in ("account_name", "bank_name", "account_number", "bank_code") if info.get(k) is not None}

    # ---- create ------------------------------------------------------------
    async def create(self, principal, property_id: int, body) -> dict:
        prop = await self.properties.get(property_id)
        if prop is None or not prop.get("is_active", True):
            raise NotFound("No such property", "property_not_found")
        appt = await self.appointments.get(body.appointment_id)
        if appt is None or appt["client_id"] != principal.user_id:
            raise NotFound("No such appointment of yours", "appointment_not_found")
        if appt["property_id"] != property_id:
            raise ValidationFailed.single("appointment_id", "is a viewing of a different property")
        if appt["status"] != "confirmed":
            raise Conflict(f"The viewing is {appt['status']}; a contract needs a confirmed viewing", "appointment_not_confirmed")
        if prop["status"] != "available":
            raise Conflict(f"This property is already {prop['status']}", "property_unavailable")
        rent = prop["listing_type"] == "rent"
        if rent and body.term_months is None:
            raise ValidationFailed.single("term_months", "is required for a rental (1-120 months)")
        if not rent and body.term_months is not None:
            raise ValidationFailed.single("term_months", "applies to rentals only; this property is for sale")
        if not await self.accounts.is_active(prop["agent_id"]):
            # Never hand out the bank details of an account that was closed or banned, nor start a
            # payment nobody can confirm.
            raise Conflict("This listing's agent account is not active; no payment can be started", "agent_inactive")
        account = await self._account_details(prop["agent_id"])
        if account is None:
            raise Conflict("The agent has not set bank details yet; ask them to add them", "agent_account_missing")
        now = self.clock.now()
        doc = await self.store.insert({
            "property_id": property_id, "property_title": prop["title"], "client_id": principal.user_id,
            "agent_id": prop["agent_id"], "parties": [principal.user_id, prop["agent_id"]], "appointment_id": appt["_id"],
            "contract_type": prop["listing_type"], "amount": prop["price"], "currency": "NGN",
            "term_months": body.term_months, "status": "awaiting_payment", "is_active": False,
            "start_date": now, "end_date": add_months(now, body.term_months) if rent else None,
            "account_details": account, "open_key": f"{property_id}:{principal.user_id}",
            "created_at": now, "updated_at": now,
        })
        # Another contract on this property may have been confirmed between our check and our
        # insert (its rival sweep ran before this contract existed): look again, and close
        # this one rather than leave a contract that can never complete.
        again = await self.properties.get(property_id)
        if again is None or again.get("status") != "available" or not again.get("is_active", True):
            await self.store.transition(doc["_id"], {}, OPEN_STATES, "cancelled", now,
                                        {"cancelled_at": now, "cancelled_by": None, "cancel_reason": "property_unavailable"},
                                        release_hold=True)
            raise Conflict("This property was just rented, sold or delisted", "property_unavailable")
        await self._announce(doc, "created", actor=principal.user_id)
        return contract_view(doc)

    # ---- reading -----------------------------------------------------------
    async def get(self, principal, contract_id: int) -> dict:
        doc = await self.store.get(contract_id)
        if doc is None or (principal.user_id not in (doc["client_id"], doc["agent_id"]) and not is_admin(principal)):
            raise NotFound("No such contract", "contract_not_found")
        return contract_view(doc)

    async def list_mine(self, principal, query) -> dict:
        return await self.store.page(principal.user_id, query.status, query.role, query, contract_view)

    # ---- transitions -------------------------------------------------------
    async def payment_sent(self, principal, contract_id: int) -> dict:
        now = self.clock.now()
        doc = await self.store.transition_as(contract_id, principal.user_id, "client", ["awaiting_payment"],
                                             "payment_pending", now, {"payment_sent_at": now})
        await self._announce(doc, "payment_sent", actor=principal.user_id)
        return contract_view(doc)

    async def decline_payment(self, principal, contract_id: int) -> dict:
        now = self.clock.now()
        doc = await self.store.transition_as(contract_id, principal.user_id, "agent", ["payment_pending"],
                                             "awaiting_payment", now, {"declined_at": now})
        await self._announce(doc, "declined", actor=principal.user_id)
        return contract_view(doc)

    async def cancel(self, principal, contract_id: int) -> dict:
        now = self.clock.now()
        doc = await self.store.transition_as(contract_id, principal.user_id, "client", OPEN_STATES, "cancelled", now,
                                             {"cancelled_at": now, "cancelled_by": principal.user_id}, release_hold=True)
        # An activation cut between its two writes may have left the property taken for this contract:
        # hand it back (the filter names this contract, so a property held by another is untouched).
        released = await self.properties.release(doc["property_id"], contract_id, now)
        if released is not None:
            await self.listings.announce(released, ["status"])
        await self._announce(doc, "cancelled", actor=principal.user_id)
        return contract_view(doc)

    async def confirm_payment(self, principal, contract_id: int) -> dict:
        current = await self.store.get(contract_id)
        if current is None or current["agent_id"] != principal.user_id or current["status"] != "payment_pending":
            await self.store.explain_refusal(contract_id, principal.user_id, "agent", ["payment_pending"])
        outcome, doc = await self._activate(current, {"agent_id": principal.user_id}, ["payment_pending"], principal.user_id)
        if outcome == "wrong_state":
            raise Conflict(f"The contract is {doc['status']}; this needs it payment_pending", "wrong_state")
        if outcome == "property_unavailable":
            raise Conflict("The property is no longer available (another contract is active, or it was delisted)",
                           "property_unavailable")
        if outcome == "lost":
            await self.store.explain_refusal(contract_id, principal.user_id, "agent", ["payment_pending"])
        return contract_view(doc)

    async def confirm_gateway_payment(self, contract_id: int, reference: str) -> tuple[str, dict | None]:
        """A payment gateway verified the client's payment: the same move as the agent's
        confirm-payment (property rented or sold, events, notifications to both parties, rivals
        closed), from either open state, since the client may have said "I have paid" first.
        Returns (outcome, contract): "activated" (this call made it active), "already_active"
        (it was active before: by this payment, or the agent confirmed it by hand), "in_progress"
        (another confirmation of this contract is half-way: ask again later), or "not_payable"
        (cancelled, expired, or the property went to someone else)."""
        for _ in range(2):  # a lost race (the agent confirmed meanwhile) is read again once
            current = await self.store.get(contract_id)
            if current is None:
                return "not_payable", None
            if current["status"] == "active" or (current["status"] == "expired" and current.get("paid_by") == reference):
                return "already_active", current
            if current["status"] not in OPEN_STATES:
                return "not_payable", current
            outcome, doc = await self._activate(current, {}, OPEN_STATES, None, {"paid_by": reference})
            if outcome == "activated":
                return outcome, doc
            if outcome == "property_unavailable":
                prop = await self.properties.get(current["property_id"])
                if prop is not None and prop.get("contract_id") == contract_id:
                    # The agent's confirmation of this very contract holds the property and is
                    # finishing: not ours to report; the caller looks again later.
                    return "in_progress", doc
                return "not_payable", doc
        return "in_progress", await self.store.get(contract_id)

    async def _activate(self, current: dict, who: dict, from_states: list[str], actor: int | None,
                        extra: dict | None = None) -> tuple[str, dict | None]:
        """open -> active, once: first the property `available -> rented|sold` (only one contract
        can win it), then the contract with its expected state in the filter. Outcomes:
        "activated"; "wrong_state" / "property_unavailable" (the property could not be taken;
        the contract as it is now); "lost" (the contract moved between our read and our write;
        the property was handed back)."""
        contract_id = current["_id"]
        now = self.clock.now()
        property_id = current["property_id"]
        new_status = "rented" if current["contract_type"] == "rent" else "sold"
        # Queued before the property is taken, run once it is (sheda_rt/appointments/closing.py): other clients'
        # viewings of it close. A job whose contract did not take the property closes nothing.
        closing = await self.viewings_closing.changing(property_id=property_id) if self.viewings_closing is not None else None
        taken = await self.properties.take(property_id, new_status, contract_id, now)
        if taken is None:
            # A process that died between these two writes left the property taken for this very
            # contract and the contract open: carry on from there, or neither the agent nor the
            # gateway could ever activate it (the property would stay taken for nobody).
            held = await self.properties.get(property_id)
            if held is not None and held.get("contract_id") == contract_id and held.get("status") == new_status:
                taken = held
        if taken is None:
            again = await self.store.get(contract_id)
            if again["status"] not in from_states:
                return "wrong_state", again
            return "property_unavailable", again
        await self.listings.announce(taken, ["status"])  # property.updated to the listing's watchers
        fields = {"activated_at": now, "is_active": True, "start_date": now, **(extra or {})}
        if current["contract_type"] == "rent":
            fields["end_date"] = add_months(now, current["term_months"])
        doc = await self.store.transition(contract_id, who, from_states, "active", now, fields, release_hold=True)
        if doc is None:  # the client cancelled (or another confirmation won) between our read and our write
            again = await self.store.get(contract_id)
            if again is None or again["status"] != "active":
                # Handed back only when this contract did not become active: another confirmation of
                # it (which may have resumed from our first write) holds the property by the same id.
                await self.listings.announce(await self.properties.release(property_id, contract_id, now), ["status"])
            return "lost", None
        await self._announce(doc, "confirmed", actor=actor)
        if self.reminders is not None:
            await self.reminders.contract_active(doc)
        await self._close_rivals(doc, now)
        if closing is not None:
            await self.viewings_closing.changed(closing)
        return "activated", doc

    async def _close_rivals(self, winner: dict, now) -> None:
        """Other open contracts on a property that just became rented/sold can never complete."""
        for rival in await self.store.open_on_property(winner["property_id"]):
            if rival["_id"] == winner["_id"]:
                continue
            doc = await self.store.transition(rival["_id"], {}, OPEN_STATES, "cancelled", now,
                                              {"cancelled_at": now, "cancelled_by": None, "cancel_reason": "property_unavailable"},
                                              release_hold=True)
            if doc is not None:
                await self._announce(doc, "cancelled", actor=winner["agent_id"], reason="the property is no longer available")

    # ---- expiry ------------------------------------------------------------
    async def expire(self, contract_id: int, *, due_only: bool = False) -> dict | None:
        """active -> expired, exactly once. Returns the expired contract, or None if someone else
        expired it first (or it is not active / not yet due when due_only)."""
        now = self.clock.now()
        who = {"end_date": {"$lte": now}} if due_only else {}
        doc = await self.store.transition(contract_id, who, ["active"], "expired", now,
                                          {"is_active": False, "expired_at": now, "property_released": False})
        if doc is None:
            return None
        await self._release(doc, now)
        CONTRACTS_EXPIRED.inc()
        await self._announce(doc, "expired", actor=None)
        if self.reminders is not None:  # ended early (an admin): its reminders must not go out
            await self.reminders.contract_ended(doc)
        return doc

    async def _release(self, doc: dict, now) -> None:
        released = await self.properties.release(doc["property_id"], doc["_id"], now)
        await self.listings.announce(released, ["status"])  # None (nothing changed) announces nothing
        await self.store.mark_released(doc["_id"])

    async def expire_by_admin(self, principal, contract_id: int) -> dict:
        doc = await self.expire(contract_id)
        if doc is None:
            current = await self.store.get(contract_id)
            if current is None:
                raise NotFound("No such contract", "contract_not_found")
            raise Conflict(f"The contract is {current['status']}; only an active contract can expire", "wrong_state")
        return contract_view(doc)

    async def expire_due(self) -> int:
        """What the periodic job does: expire every due contract; finish any half-done release."""
        expired, page = 0, 500
        while True:
            due = await self.store.due_ids(self.clock.now(), limit=page)
            progressed = 0
            for contract_id in due:
                try:
                    if await self.expire(contract_id, due_only=True) is not None:
                        expired += 1
                        progressed += 1
                except Exception:  # one bad contract must not hold up the others; the next run retries it
                    log.exception("could not expire contract %s", contract_id)
            if len(due) < page or not progressed:
                break
        for doc in await self.store.unreleased():
            try:
                await self._release(doc, self.clock.now())
            except Exception:
                log.exception("could not release the property of contract %s", doc["_id"])
        return expired

    # ---- notifications -----------------------------------------------------
    _TEXT = {
        "created": ("Payment started", "A client is paying for “{title}” ({amount} {currency}) and will send it to your account."),
        "payment_sent": ("Payment sent", "The client says they have paid {amount} {currency} for “{title}”. Please confirm."),
        "confirmed": ("Payment confirmed", "The agent confirmed your payment for “{title}”. Your contract is active."),
        "declined": ("Payment not received", "The agent has not received your payment for “{title}” yet."),
        "cancelled": ("Contract cancelled", "The contract for “{title}” was cancelled{reason}."),
        "expired": ("Contract expired", "The contract for “{title}” has ended."),
    }
    # Confirmed by the payment gateway (no actor): both parties are told, each in their own words (the
    # agent's "confirmed" text, "The agent confirmed your payment", reached the agent too, and was untrue for both).
    _PAID_ONLINE = {
        "client": ("Payment confirmed", "Your payment of {amount} {currency} for “{title}” was received. Your contract is active."),
        "agent": ("Payment received", "The client paid {amount} {currency} for “{title}” online. The contract is active."),
    }

    async def _announce(self, doc: dict, what: str, actor: int | None, reason: str | None = None) -> None:
        view = contract_view(doc)
        title, text = self._TEXT[what]
        body = text.format(title=doc.get("property_title"), amount=view["amount"], currency=view["currency"],
                           reason=f": {reason}" if reason else "")
        kind = f"contract.{what}"
        data = {"contract_id": doc["_id"], "property_id": doc["property_id"], "status": doc["status"]}
        parties = [doc["client_id"], doc["agent_id"]]
        targets = [p for p in parties if p != actor] if actor in parties else parties
        for user_id in targets:
            if what == "confirmed" and actor is None:
                title, text = self._PAID_ONLINE["client" if user_id == doc["client_id"] else "agent"]
                body = text.format(title=doc.get("property_title"), amount=view["amount"], currency=view["currency"])
            await self.notifications.notify(user_id, kind, title, body, data)
        await self.notifications.publish_event(parties, {"type": kind, "contract": view})
