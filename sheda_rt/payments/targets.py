"""What a payment pays for: one `PaymentTarget` per purpose, so the payment flow itself
(checkout, webhook, verify, reconciliation, flags) never changes when a purpose is added.

A target answers two questions. Before the checkout, `charge`: may this user pay this
target now, and how much, to whom? After the gateway verified the money, `apply`: carry
out the payment's effect, idempotently (a webhook, the reconciliation job and a manual
confirmation may all get there, in several processes). PaymentService holds them in a
dict by purpose (`targets`, wired in sheda_rt/context.py); registering a purpose is one
entry there.

    contract      ContractPaymentTarget      (here) the contract becomes active as the agent's confirm-payment makes it
    installment   InstallmentPaymentTarget   (sheda_rt/payments/installments.py) the line is confirmed as the builder's confirm does
    wallet_topup  WalletTopupTarget          (sheda_rt/wallet/topup.py) the payer's wallet is credited
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

from bson.decimal128 import Decimal128

from sheda_rt.contracts.store import OPEN_STATES
from sheda_rt.errors import Conflict, Forbidden, NotFound

if TYPE_CHECKING:  # types only: the context wires these in
    from sheda_rt.contracts.service import ContractService
    from sheda_rt.contracts.store import ContractStore


@dataclass(frozen=True)
class Charge:
    """What one payment of a target will be, as its target decided it."""

    amount: Decimal            # naira, kobo-exact
    currency: str              # "NGN"
    payee_id: int | None       # None: the platform itself (a wallet top-up)
    open_key: str              # at most one live attempt per key, e.g. "contract:12", "installment:7:2"
    metadata: dict             # sent to the gateway
    parties: list[int]         # who may read the payment (payer and payee)
    #: More fields stored on the payment for `apply` to read (an installment's line number: {"line": 2}).
    record: dict = field(default_factory=dict)
    #: At most this many live (initialized or pending, not flagged) attempts of this purpose per payer; None: no cap
    #: (the target's one live attempt per open_key is bound enough). A wallet top-up's: WALLET_TOPUP_MAX_PENDING.
    live_cap: int | None = None


class PaymentTarget(Protocol):
    purpose: str               # "contract" | "installment" | "wallet_topup"

    async def charge(self, principal, body) -> Charge:
        """Validates that `principal` may pay this target now (body: PaymentCreate); raises
        NotFound / Forbidden / Conflict / ValidationFailed, so nothing is stored."""
        ...

    async def apply(self, payment: dict) -> tuple[str, tuple[str, str] | None]:
        """Carries out a succeeded payment's effect idempotently. (outcome, flag): flag is
        (reason, detail) to flag the payment for an admin, or None. Outcome "in_progress" means
        try later: the payment stays unapplied and the reconciliation job calls again."""
        ...


def also_sent(record: dict, sent_field: str) -> bool:
    """Whether the payer had also said a bank transfer is on its way for what this payment paid (a contract's
    payment-sent, an installment line's): marked sent (`sent_field`) after any decline (`declined_at`). The
    gateway's money is real, so the target still moves, but the payee may be receiving that transfer too: the
    same possible double payment as a manual confirmation before the gateway's (`*_already_*`), in the other
    order, so the payment is flagged `<purpose>_also_sent` for an admin. Sent and then declined: no transfer."""
    sent_at, declined_at = record.get(sent_field), record.get("declined_at")
    return sent_at is not None and (declined_at is None or declined_at < sent_at)


def require_scope(principal, scope: str) -> None:
    """The role a purpose is paid in (the route itself takes any user: wallets are everyone's)."""
    if scope not in principal.scopes:
        raise Forbidden(f"This needs the {scope} scope", "insufficient_scope")


class ContractPaymentTarget:
    """A contract's client pays its amount to its agent; a verified success activates the
    contract exactly as the agent's confirm-payment does (ContractService.confirm_gateway_payment)."""

    purpose = "contract"

    def __init__(self, *, contracts: ContractService, contract_store: ContractStore):
        self.contracts = contracts
        self.contract_store = contract_store

    async def charge(self, principal, body) -> Charge:
        contract = await self.contract_store.get(body.target_id)
        if contract is None or principal.user_id not in (contract["client_id"], contract["agent_id"]):
            raise NotFound("No such contract", "contract_not_found")
        if contract["client_id"] != principal.user_id:
            raise Forbidden("Only the contract's client pays for it", "not_client")
        require_scope(principal, "client")
        if contract["status"] not in OPEN_STATES:
            raise Conflict(f"The contract is {contract['status']}; only a contract awaiting payment can be paid", "wrong_state")
        amount = contract["amount"].to_decimal() if isinstance(contract["amount"], Decimal128) else contract["amount"]
        return Charge(amount=amount, currency=contract.get("currency", "NGN"), payee_id=contract["agent_id"],
                      open_key=f"contract:{contract['_id']}", metadata={"purpose": "contract", "target_id": contract["_id"]},
                      parties=[principal.user_id, contract["agent_id"]])

    async def apply(self, payment: dict) -> tuple[str, tuple[str, str] | None]:
        outcome, contract = await self.contracts.confirm_gateway_payment(payment["target_id"], payment["reference"])
        if outcome == "already_active" and (contract or {}).get("paid_by") != payment["reference"]:
            return outcome, ("contract_already_active",
                             "the contract was already active (confirmed by the agent or paid by another payment): "
                             "the client may have paid twice")
        if outcome in ("activated", "already_active") and also_sent(contract, "payment_sent_at"):
            # Activated by this payment (now, or by an earlier try of it cut before `applied` was recorded).
            return outcome, ("contract_also_sent",
                             "the client had marked the contract paid by bank transfer (payment-sent) before this payment "
                             "activated it: the client may have paid twice")
        if outcome == "not_payable":
            status = (contract or {}).get("status", "missing")
            return outcome, ("contract_not_payable", f"paid, but the contract is {status}: a refund is due")
        return outcome, None
