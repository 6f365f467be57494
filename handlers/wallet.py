"""/api/v1/wallet, /api/v1/admin/wallet/refunds, /api/v1/admin/ledger/audit: thin edges over WalletService.
Top-ups start at POST /api/v1/payments {purpose: "wallet_topup"} (sheda_rt/wallet/topup.py)."""
from __future__ import annotations

from handlers.base import APIHandler
from handlers.routing import Reply, endpoint, route
from sheda_rt.accounts.auth import ADMIN, USER
from sheda_rt.responses import Page
from sheda_rt.wallet.models import AuditOut, LedgerTransactionOut, RefundCreate, WalletEntryOut, WalletOut, WalletQuery

TAGS = ("wallet",)


class WalletHandler(APIHandler):
    @endpoint("My wallet: balance and recent entries", response=WalletOut, auth=USER, errors=(401,), tags=TAGS)
    async def get(self):
        """The balance (naira, recomputed from the ledger), what the user owes (`owed`: top-ups the gateway took back
        after the money was spent; the next top-ups repay it first) and the 10 newest entries. Top up through
        POST /payments `{purpose: "wallet_topup", target_id: <your id>, amount: "5000.00"}`; spend on promotions."""
        return await self.ctx.wallet.wallet(self.principal.user_id)


class WalletTransactionsHandler(APIHandler):
    @endpoint("My wallet's entries, newest first", response=Page[WalletEntryOut], auth=USER, query=WalletQuery,
              errors=(401, 422), tags=TAGS)
    async def get(self, query: WalletQuery):
        """Cursor paginated. `amount` is what each transaction did to this wallet (+ top-ups and refunds, - spends);
        `lines` are the whole balanced transaction."""
        return await self.ctx.wallet.transactions(self.principal.user_id, query)


class RefundsHandler(APIHandler):
    @endpoint("Refund a wallet spend (admins)", response=LedgerTransactionOut, auth=ADMIN, body=RefundCreate, status=201,
              also={200: "This spend was already refunded: that refund"}, errors=(401, 403, 404, 409, 422), tags=("admin",))
    async def post(self, body: RefundCreate):
        """`{transaction_id, reason}` → a new transaction with the spend's lines negated (`reverses` names the spend):
        the money goes back to the wallet from platform:revenue. Nothing is edited. Once per spend: asking again
        answers 200 with the first refund. 404 `transaction_not_found`; 409 `not_refundable` for anything but a spend.
        A promotion's spend refunded ends the promotion: what is left of its featured days leaves the listing and its
        record says `refunded` (GET /properties/{id}/promotions); asking again finishes one a crash cut short."""
        refund, created = await self.ctx.wallet.refund(self.principal.user_id, body.transaction_id, body.reason)
        return refund if created else Reply(refund, 200)


class LedgerAuditHandler(APIHandler):
    @endpoint("Audit the ledger (admins)", response=AuditOut, auth=ADMIN, errors=(401, 403), tags=("admin",))
    async def get(self):
        """Recomputes every account from the ledger in one snapshot: every transaction must sum to zero, every wallet's
        cached balance must equal its ledger sum and none may be below zero; `owed` lists who still owes what (each
        wallet's figure checked against its ledger). `ok` is false and `mismatches` lists
        each failure otherwise (there must never be one)."""
        return await self.ctx.wallet.audit()


default_handlers = [
    route("/api/v1/wallet", WalletHandler),
    route("/api/v1/wallet/transactions", WalletTransactionsHandler),
    route("/api/v1/admin/wallet/refunds", RefundsHandler),
    route("/api/v1/admin/ledger/audit", LedgerAuditHandler),
]
