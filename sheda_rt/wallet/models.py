"""Request and response models of the wallet and the ledger."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints
from typing_extensions import Annotated

from sheda_rt.database.ids import MAX_ID
from sheda_rt.pagination import PageQuery
from sheda_rt.responses import MoneyText, ResponseModel, Timestamp


class LedgerLine(ResponseModel):
    account: str = Field(description='"wallet:<user_id>", "platform:revenue", "gateway:clearing" or "platform:reversal_shortfall"')
    amount: MoneyText = Field(description="Signed naira: positive credits the account, negative debits it")


class LedgerTransactionOut(ResponseModel):
    """One balanced ledger transaction: its lines sum to zero. Never edited; a refund is another
    transaction (`reverses` names the one it undoes)."""

    id: int
    kind: str = Field(description="topup, spend, refund, topup_reversal (the gateway gave a top-up back to the payer), "
                                  "owed_repayment (a top-up repaying what a reversal could not take), topup_void")
    lines: list[LedgerLine]
    memo: str
    refs: dict = Field(description="What the money was for (e.g. promotion_id, payment reference)")
    reverses: Optional[int] = Field(description="The transaction this one refunds; null otherwise")
    created_at: Timestamp


class WalletEntryOut(LedgerTransactionOut):
    """A ledger transaction as the wallet's owner sees it: `amount` is what it did to this wallet."""

    amount: MoneyText = Field(description="Signed naira: + credited to this wallet, - taken from it")
    balance_after: MoneyText = Field(description="This wallet's balance right after the transaction")


class WalletOut(ResponseModel):
    user_id: int
    currency: str
    balance: MoneyText = Field(description="Naira, recomputed from the ledger")
    owed: MoneyText = Field(description="What the user owes: top-ups the gateway took back after the money was spent; "
                                        "the next top-ups repay it first. \"0.00\" when nothing is owed")
    recent: list[WalletEntryOut] = Field(description="The newest entries (at most 10); the rest: GET /wallet/transactions")


class RefundCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transaction_id: StrictInt = Field(ge=1, le=MAX_ID, description="The spend to reverse")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class WalletQuery(PageQuery):
    model_config = ConfigDict(extra="forbid")


class AuditMismatch(ResponseModel):
    kind: str = Field(description="unbalanced (a transaction's lines do not sum to zero), cached_balance (a wallet's "
                                  "cached balance differs from its ledger), negative_wallet, cached_owed (what a wallet "
                                  "keeps as owed differs from its ledger), negative_owed")
    detail: str
    account: Optional[str] = None
    transaction_id: Optional[int] = None


class AuditOut(ResponseModel):
    ok: bool
    transactions: int = Field(description="How many transactions were checked")
    wallets: int = Field(description="How many wallets were checked")
    wallets_total: MoneyText = Field(description="All wallets' balances together, from the ledger")
    platform: dict[str, MoneyText] = Field(description="The platform's accounts (revenue, gateway clearing) from the ledger")
    owed: dict[str, MoneyText] = Field(description="What each user owes (\"wallet:<id>\" -> naira), from the ledger: "
                                                   "reversals their wallet could not pay, less their top-ups' repayments; "
                                                   "users owing nothing are not listed")
    mismatches: list[AuditMismatch]
