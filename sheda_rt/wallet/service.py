"""The wallet's rules: spending, crediting top-ups, refunds, what a user sees, the audit.

Money moves only as balanced ledger transactions (sheda_rt/wallet/ledger.py explains how each
is written atomically with the wallet's balance, and why a crash never leaves half of one):

    top-up   gateway:clearing -X  -> wallet:<payer> +X        key "topup:<payment reference>"
    spend    wallet:<user>    -X  -> platform:revenue +X      key "spend:<user>:<Idempotency-Key>"
    refund   the spend's lines negated, `reverses` = its id     key "refund:<spend id>"
    top-up reversal (the gateway refunded it, or lost a chargeback)  key "topup_reversal:<gateway event>"
             gateway:clearing +X, wallet:<payer> -min(X, balance), platform:reversal_shortfall -(the rest)
    top-up void (refunded before it was credited)                    key "topup:<payment reference>"
             no lines: it holds the top-up's key, so its credit is never written (void_topup)
    owed repayment (a top-up repays what reversals could not take)    key "owed_repayment:<payment reference>"
             wallet:<payer> -R, platform:reversal_shortfall +R; R = min(owed, what the top-up credited, the balance)

What a user owes is what top-up reversals debited from platform:reversal_shortfall for their wallet (the money was
spent when the gateway took it back), less what their later top-ups repaid (repay_owed); the wallet keeps it beside
its balance (LedgerStore, `owed_minor`) and GET /wallet shows it.

Amounts are integer kobo inside, decimal naira strings ("1200.00") on the wire.
"""
from __future__ import annotations

import logging
import re
from decimal import Decimal

from sheda_rt.errors import ApiError, Conflict, NotFound, ValidationFailed
from sheda_rt.listings.money import format_money
from sheda_rt.wallet.ledger import (CLEARING, REVENUE, REVERSAL_SHORTFALL, LedgerStore, Overdraft, wallet_account,
                                    wallet_owner)

log = logging.getLogger("sheda.wallet")

CURRENCY = "NGN"
#: What a client's Idempotency-Key may look like: printable, bounded (it becomes part of a unique key).
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:=-]{1,100}")
#: Kinds of transaction the ledger holds; a spend's kind may name what it paid for ("spend:promotion").
REFUNDABLE = ("spend",)
RECENT = 10
#: The kind of the entry a refund writes under a top-up's own key when it found no credit to take back (void_topup).
TOPUP_VOID = "topup_void"


class InsufficientFunds(ApiError):
    """402: the wallet cannot pay; nothing was charged."""

    status, code = 402, "insufficient_funds"


def naira(minor: int) -> str:
    """Signed kobo -> "1200.00" / "-1200.00" (format_money's format)."""
    minor = int(minor)
    return ("-" if minor < 0 else "") + format_money(Decimal(abs(minor)).scaleb(-2))


def transaction_view(doc: dict) -> dict:
    return {
        "id": doc["_id"],
        "kind": doc["kind"],
        "lines": [{"account": line["account"], "amount": naira(line["amount_minor"])} for line in doc["lines"]],
        "memo": doc.get("memo", ""),
        "refs": doc.get("refs", {}),
        "reverses": doc.get("reverses"),
        "created_at": doc["created_at"],
    }


def entry_view(doc: dict, user_id: int) -> dict:
    """A transaction as the wallet of `user_id` saw it."""
    account = wallet_account(user_id)
    mine = [line for line in doc["lines"] if line["account"] == account]
    return {**transaction_view(doc), "amount": naira(sum(int(line["amount_minor"]) for line in mine)),
            "balance_after": naira(mine[-1].get("balance_after_minor", 0) if mine else 0)}


class WalletService:
    def __init__(self, ledger: LedgerStore, *, clock):
        self.ledger = ledger
        self.clock = clock
        #: What a refunded spend's feature does about it, by the spend's kind (the composition root registers it:
        #: "spend:promotion" -> PromotionService.refunded, which ends the promotion; see on_refund). Called with (the spend, the
        #: refund) after every refund request, the first and each one again, so a request cut short between the
        #: money and the effect is finished by asking again. It must be idempotent.
        self.refund_effects: dict = {}

    def on_refund(self, kind: str, effect) -> None:
        """Register what a refunded spend of `kind` does in its feature (the composition root wires it,
        so the wallet imports no feature)."""
        self.refund_effects[kind] = effect

    # ---- moving money --------------------------------------------------------------
    async def spend(self, user_id: int, amount_minor: int, *, idempotency_key: str, kind: str = "spend", memo: str = "",
                    refs: dict | None = None) -> dict:
        """Move `amount_minor` kobo from wallet:<user> to platform:revenue, once per
        (user, idempotency_key): a retry returns the same transaction; the same key with a
        different amount or kind is 409 idempotency_key_reused; a wallet that cannot pay is 402
        insufficient_funds with nothing charged. Returns the transaction's view."""
        if not isinstance(idempotency_key, str) or not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise ValidationFailed.single("Idempotency-Key", "must be 1-100 characters of A-Z a-z 0-9 _ . : = -")
        if not isinstance(amount_minor, int) or isinstance(amount_minor, bool) or amount_minor <= 0:
            raise ValueError("a spend is a positive number of kobo")
        if not kind.startswith("spend"):
            raise ValueError("a spend's kind starts with 'spend'")
        doc = {"key": self._spend_key(user_id, idempotency_key), "kind": kind, "memo": memo, "refs": dict(refs or {}),
               "idempotency_key": idempotency_key,
               "lines": [{"account": wallet_account(user_id), "amount_minor": -amount_minor},
                         {"account": REVENUE, "amount_minor": amount_minor}]}
        try:
            stored, _created = await self.ledger.post(doc, self.clock.now())
        except Overdraft as exc:
            raise InsufficientFunds(f"The wallet holds {naira(exc.balance_minor)} NGN; this costs {naira(exc.needed_minor)} NGN",
                                    extra={"balance": naira(exc.balance_minor), "required": naira(exc.needed_minor)})
        if stored["kind"] != kind or self._debit(stored, user_id) != amount_minor:
            raise Conflict("This Idempotency-Key was already used for a different payment", "idempotency_key_reused")
        return transaction_view(stored)

    async def spent(self, user_id: int, idempotency_key: str) -> dict | None:
        """The spend stored under this (user, idempotency key), or None when none was made: how a
        caller that died between charging and recording learns whether the charge happened."""
        return await self.ledger.by_key(self._spend_key(user_id, idempotency_key))

    @staticmethod
    def _spend_key(user_id: int, idempotency_key: str) -> str:
        return f"spend:{user_id}:{idempotency_key}"

    @staticmethod
    def _debit(doc: dict, user_id: int) -> int:
        account = wallet_account(user_id)
        return -sum(int(line["amount_minor"]) for line in doc["lines"] if line["account"] == account)

    async def credit_topup(self, user_id: int, amount_minor: int, *, reference: str, refs: dict | None = None,
                           memo: str = "Wallet top-up") -> tuple[dict, bool]:
        """A top-up the gateway confirmed: gateway:clearing -> wallet:<user>, once per payment reference.
        (the transaction, credited now?); the top-up's void (kind topup_void, not credited) when a refund took its key first."""
        doc = {"key": f"topup:{reference}", "kind": "topup", "memo": memo, "refs": {"payment_reference": reference, **(refs or {})},
               "lines": [{"account": CLEARING, "amount_minor": -amount_minor},
                         {"account": wallet_account(user_id), "amount_minor": amount_minor}]}
        stored, created = await self.ledger.post(doc, self.clock.now())
        return transaction_view(stored), created

    async def void_topup(self, reference: str, *, refs: dict, memo: str) -> tuple[dict, bool]:
        """The gateway gave a top-up back before it was credited: take the top-up's own ledger key ("topup:<reference>")
        with an entry of no lines (kind topup_void), so its credit is never written after it, by an apply in flight in
        any process or by the reconciliation (credit_topup then finds this entry). The key's unique index decides
        between the two, whatever the interleaving. (the entry under the key, written now?): when a credit holds the
        key already, that credit (kind topup), to be taken back."""
        doc = {"key": f"topup:{reference}", "kind": TOPUP_VOID, "memo": memo, "refs": {"payment_reference": reference, **refs},
               "lines": []}
        stored, created = await self.ledger.post(doc, self.clock.now())
        return transaction_view(stored), created

    async def repay_owed(self, user_id: int, reference: str) -> dict | None:
        """A top-up (credited under `reference`) repays what the user owes first: one owed_repayment entry, keyed by the
        top-up's reference, so once per top-up whoever finishes it (a webhook, the reconciliation, a redelivery, in any
        process); R = min(owed, what this top-up credited, the balance now). The ledger holds both guards in the
        write (the balance never below zero, never more repaid than owed: Overdraft, read again). The entry, or None
        when nothing is owed (or the top-up credited nothing)."""
        if await self.ledger.owed(user_id) <= 0:  # the usual case: one read
            return None
        key = f"owed_repayment:{reference}"
        existing = await self.ledger.by_key(key)
        if existing is not None:
            return transaction_view(existing)
        for _attempt in range(10):  # a spend, a reversal or another top-up's repayment between the reads and the write
            credited = await self.topup_credited(reference)
            take = min(await self.ledger.owed(user_id), credited or 0, await self.ledger.cached_balance(user_id))
            if take <= 0:
                return None
            doc = {"key": key, "kind": "owed_repayment", "memo": "Repays what the gateway took back after it was spent",
                   "refs": {"payment_reference": reference},
                   "lines": [{"account": wallet_account(user_id), "amount_minor": -take},
                             {"account": REVERSAL_SHORTFALL, "amount_minor": take}]}
            try:
                stored, _created = await self.ledger.post(doc, self.clock.now())
                return transaction_view(stored)
            except Overdraft:
                continue
        raise RuntimeError(f"owed repayment {key}: the wallet kept changing")

    async def topup_credited(self, reference: str) -> int | None:
        """What the top-up paid under `reference` credited, in kobo; None when no credit was made for it (none yet, or
        voided: refunded before its credit)."""
        topup = await self.ledger.by_key(f"topup:{reference}")
        return None if topup is None or topup["kind"] == TOPUP_VOID else -self._debit(topup, topup["wallet"])

    async def topup_notice(self, reference: str) -> dict | None:
        """What the payer is told of the top-up credited under `reference` (naira strings): {user_id, amount credited,
        repaid (what it repaid of the user's debt, repay_owed), balance (after the credit and that repayment, as the
        ledger recorded it), owed (now)}; None when no credit was made for it."""
        topup = await self.ledger.by_key(f"topup:{reference}")
        if topup is None or topup["kind"] == TOPUP_VOID:
            return None
        user_id = topup["wallet"]
        repay = await self.ledger.by_key(f"owed_repayment:{reference}")
        return {"user_id": user_id, "amount": entry_view(topup, user_id)["amount"],
                "repaid": naira(self._debit(repay, user_id) if repay else 0),
                "balance": entry_view(repay or topup, user_id)["balance_after"], "owed": naira(await self.ledger.owed(user_id))}

    async def reversal_notice(self, source: str) -> dict | None:
        """What the payer is told of the top-up reversal made for the gateway event `source` (naira strings): {user_id,
        amount the gateway took back, taken (from the wallet), shortfall (what the wallet no longer held: owed),
        balance (after it), owed (now)}; None when none was made."""
        tx = await self.ledger.by_key(f"topup_reversal:{source}")
        if tx is None:
            return None
        user_id = tx["wallet"]
        shortfall = -sum(int(line["amount_minor"]) for line in tx["lines"] if line["account"] == REVERSAL_SHORTFALL)
        return {"user_id": user_id, "amount": naira(sum(int(line["amount_minor"]) for line in tx["lines"] if line["account"] == CLEARING)),
                "taken": naira(self._debit(tx, user_id)), "shortfall": naira(shortfall),
                "balance": entry_view(tx, user_id)["balance_after"], "owed": naira(await self.ledger.owed(user_id))}

    async def topup_reversals(self, reference: str) -> tuple[int, list[dict]]:
        """What the ledger already took back of that top-up: (kobo in all, one {source, amount_minor, why, at} per
        reversal), for a payment reversed before its reservations were recorded (PaymentService._reserve_reversal)."""
        topup = await self.ledger.by_key(f"topup:{reference}")
        if topup is None:
            return 0, []
        entries = [{"source": tx["key"].split(":", 1)[1], "why": tx.get("refs", {}).get("reason", "refund"), "at": tx["created_at"],
                    "amount_minor": sum(int(line["amount_minor"]) for line in tx["lines"] if line["account"] == CLEARING)}
                   for tx in await self.ledger.reversals_of(topup["_id"]) if tx["kind"] == "topup_reversal"]
        return sum(e["amount_minor"] for e in entries), entries

    async def reverse_topup(self, reference: str, amount_minor: int, *, source: str, memo: str,
                            refs: dict | None = None) -> tuple[dict | None, bool, int]:
        """The gateway gave back (a refund, a lost chargeback) `amount_minor` kobo of the top-up paid under
        `reference`: take it back from the payer's wallet, once per `source` (the gateway event's id).
        (the reversal, made now?, its shortfall in kobo); (None, False, 0) when no credit was made for that
        reference, or earlier reversals already took all of it back.

        Never more than the top-up credited, all reversals of it together: across processes, by the caller's reservation
        of `amount_minor` on the payment first (PaymentService._reserve_reversal); the cap read here from the ledger is
        a second guard that only holds for reversals not racing. A wallet never goes below zero: what it
        no longer holds (the user spent it) is the shortfall, debited from platform:reversal_shortfall instead and
        recorded in refs.shortfall (the caller flags it for an admin). The wallet's line is there even at 0.00, so
        the user sees the reversal."""
        key = f"topup_reversal:{source}"
        existing = await self.ledger.by_key(key)
        if existing is None:
            topup = await self.ledger.by_key(f"topup:{reference}")
            if topup is None or topup["kind"] == TOPUP_VOID:
                return None, False, 0
            user_id = topup["wallet"]
            credited = self._debit(topup, user_id) * -1
            taken_back = sum(int(line["amount_minor"]) for tx in await self.ledger.reversals_of(topup["_id"])
                             for line in tx["lines"] if line["account"] == CLEARING)
            amount_minor = min(amount_minor, credited - taken_back)
            if amount_minor <= 0:
                return None, False, 0
            for _attempt in range(10):  # a spend between reading the balance and the write: read it again
                take = min(amount_minor, await self.ledger.cached_balance(user_id))
                shortfall = amount_minor - take
                lines = [{"account": CLEARING, "amount_minor": amount_minor},
                         {"account": wallet_account(user_id), "amount_minor": -take}]
                if shortfall:
                    lines.append({"account": REVERSAL_SHORTFALL, "amount_minor": -shortfall})
                doc = {"key": key, "kind": "topup_reversal", "memo": memo, "reverses": topup["_id"],
                       "refs": {"payment_reference": reference, **(refs or {}), "shortfall": naira(shortfall)},
                       "lines": lines}
                try:
                    existing, created = await self.ledger.post(doc, self.clock.now())
                    break
                except Overdraft:
                    continue
            else:
                raise RuntimeError(f"top-up reversal {key}: the wallet kept changing")
        else:
            created = False
        shortfall = -sum(int(line["amount_minor"]) for line in existing["lines"] if line["account"] == REVERSAL_SHORTFALL)
        return transaction_view(existing), created, shortfall

    async def refund(self, principal_id: int, transaction_id: int, reason: str) -> tuple[dict, bool]:
        """An admin reverses a spend: a new transaction with its lines negated, once per spend
        (a second call returns the first refund). (the refund, made now?)"""
        original = await self.ledger.get(transaction_id)
        if original is None:
            raise NotFound("No such transaction", "transaction_not_found")
        if original["kind"].split(":")[0] not in REFUNDABLE:
            raise Conflict(f"A {original['kind']} transaction cannot be refunded; only spends can", "not_refundable")
        doc = {"key": f"refund:{transaction_id}", "kind": "refund", "memo": reason, "reverses": transaction_id,
               "refs": {"refunded_by": principal_id, **{k: v for k, v in original.get("refs", {}).items()}},
               "lines": [{"account": line["account"], "amount_minor": -int(line["amount_minor"])} for line in original["lines"]]}
        try:
            stored, created = await self.ledger.post(doc, self.clock.now())
        except Overdraft as exc:  # only a refund of a credit could debit a wallet; spends credit it back
            raise Conflict(f"The refund would take wallet {exc.user_id} below zero", "refund_overdraws")
        effect = self.refund_effects.get(original["kind"])
        if effect is not None:
            await effect(original, stored)
        return transaction_view(stored), created

    # ---- reading ---------------------------------------------------------------------
    async def balance(self, user_id: int) -> int:
        """The wallet's balance in kobo (the cached figure the spends' guard keeps; GET /wallet and the
        audit hold it to the ledger)."""
        return await self.ledger.cached_balance(user_id)

    async def wallet(self, user_id: int) -> dict:
        ledger_minor, cached_minor, newest, owed_minor = await self.ledger.wallet_view(user_id, RECENT)
        if ledger_minor != cached_minor:  # never expected: the two only change together
            log.error('{"event": "wallet_cache_mismatch", "user_id": %d, "ledger": %d, "cached": %d}', user_id, ledger_minor,
                      cached_minor)
        return {"user_id": user_id, "currency": CURRENCY, "balance": naira(ledger_minor), "owed": naira(owed_minor),
                "recent": [entry_view(doc, user_id) for doc in newest]}

    async def transactions(self, user_id: int, page) -> dict:
        return await self.ledger.page(user_id, page, lambda doc: entry_view(doc, user_id))

    async def audit(self) -> dict:
        """Recompute every account from the ledger (one snapshot): each transaction must sum to zero,
        each wallet's cached balance must equal its ledger sum, no wallet may be below zero; what each user owes
        (`owed`, per the ledger: those owing nothing are left out) must equal what their wallet keeps."""
        count, totals, unbalanced, cached, owed, cached_owed = await self.ledger.snapshot_totals()
        mismatches = [{"kind": "unbalanced", "transaction_id": u["transaction_id"],
                       "detail": f"lines sum to {naira(u['sum_minor'])}, not 0"} for u in unbalanced]
        wallets: dict[int, int] = {}
        platform: dict[str, int] = {}
        for account, total in totals.items():
            owner = wallet_owner(account)
            if owner is None:
                platform[account] = total
            else:
                wallets[owner] = total
        for user_id in sorted(set(wallets) | set(cached)):
            from_ledger, held = wallets.get(user_id, 0), cached.get(user_id, 0)
            if from_ledger != held:
                mismatches.append({"kind": "cached_balance", "account": wallet_account(user_id),
                                   "detail": f"the ledger says {naira(from_ledger)}, the wallet holds {naira(held)}"})
            if from_ledger < 0:
                mismatches.append({"kind": "negative_wallet", "account": wallet_account(user_id),
                                   "detail": f"the ledger says {naira(from_ledger)}"})
        for user_id in sorted(set(owed) | set(cached_owed)):  # a wallet without owed_minor is read from its ledger
            from_ledger = owed.get(user_id, 0)
            if user_id in cached_owed and cached_owed[user_id] != from_ledger:
                mismatches.append({"kind": "cached_owed", "account": wallet_account(user_id),
                                   "detail": f"the ledger says {naira(from_ledger)} owed, the wallet keeps {naira(cached_owed[user_id])}"})
            if from_ledger < 0:
                mismatches.append({"kind": "negative_owed", "account": wallet_account(user_id),
                                   "detail": f"the ledger says {naira(from_ledger)} owed"})
        return {"ok": not mismatches, "transactions": count, "wallets": len(set(wallets) | set(cached)),
                "wallets_total": naira(sum(wallets.values())), "platform": {k: naira(v) for k, v in sorted(platform.items())},
                "owed": {wallet_account(u): naira(v) for u, v in sorted(owed.items()) if v > 0},
                "mismatches": mismatches}
