"""The ledger: `ledger_transactions` (the truth) and `wallets` (each user's cached balance).

Every movement of money is one ledger transaction: a unique `key` (the idempotency key, scoped
by the caller: "spend:<user>:<client key>", "topup:<reference>", "refund:<transaction id>"),
a `kind`, and `lines` [{account, amount_minor}] in integer kobo that sum to zero. Accounts are
"wallet:<user_id>", "platform:revenue" and "gateway:clearing". A transaction is never edited
or deleted; a refund is a new transaction with the lines negated.

Atomicity: one multi-document transaction (the driver's `start_session` / `with_transaction`)
per ledger transaction. Inside it:

  1. the key is looked up (a retry of a committed transaction returns it, nothing is written);
  2. each wallet the lines debit is decremented with `update_one({_id, balance_minor: {$gte: amount}},
     {$inc})`: when that matches nothing the wallet cannot pay and the whole transaction aborts;
     each wallet credited is incremented; the balance after is read back into the line;
  3. the ledger transaction is inserted under the unique index on `key`.

Why a transaction and not a conditional update followed by an insert: SecantusDB (checked: version
0.7) implements MongoDB's transaction protocol on WiredTiger snapshots — statements carry
lsid/txnNumber/autocommit, a write to a document another open transaction wrote fails with
WriteConflict labelled TransientTransactionError, a duplicate key aborts unlabelled — and a real
MongoDB replica set does the same. `with_transaction` retries the transient failures (with
backoff), so of 50 concurrent spends from one wallet, in one or several processes, each one reads
and decrements the balance as if alone: the conditional `$inc` is the guard, the snapshot makes it
and the ledger insert one unit. tests/test_wallet.py and tests/test_multiprocess_wallet.py race
50 spends in one server and from two processes and audit the ledger afterwards (both checked to
fail without the `$gte` guard). Atomic, yes; durable, not by itself on the embedded database:
see below.

Crash consistency: nothing is visible until the commit, and the commit is atomic on both engines
(tested: the embedded database killed -9 in the middle of spends restarts with every wallet equal
to its ledger). Durability needs one more step on the embedded database: SecantusDB 0.7 commits a
multi-document transaction without syncing its journal whatever the write concern says, so a
kill -9 of it lost the last acknowledged spend (measured, 3 runs of 3). `post` therefore makes one
journaled single-document write after the commit (`_durable`; a journal is one sequence, so that
sync covers the commit) before it answers; a replica set honours the commit's own j: true and the
extra write merely costs a round trip. A process killed before the commit leaves an open
transaction that the database aborts when it expires (transactionLifetimeLimitSeconds, 60 s on
both engines); until then a write to that wallet conflicts and is retried, so a spend may wait,
never double-charge. So there is no state "wallet changed, ledger not" to repair and no recovery
pass: a caller that lost the answer retries with the same key and gets either the committed
transaction or a fresh, single charge. tests/test_multiprocess_wallet.py kills the database
mid-spends and checks all of it: no acknowledged spend lost, the audit ok, every key retried
charges the rest exactly once.

Speed under contention: transactions on one wallet conflict and retry, so within a process the
writes to one wallet queue behind an asyncio lock (`_one_at_a_time`); across processes the database
alone decides.

The cached balance exists for that guard (a conditional update needs a number on one document);
it is only ever changed in the same transaction as a ledger line on that wallet, and
GET /wallet and the audit recompute every balance from the ledger and compare.

What a user owes (`owed_minor` on the wallet) is cached the same way: the platform:reversal_shortfall lines of
that wallet's transactions, negated (a top-up reversal's shortfall adds to it, an owed_repayment takes from it),
changed only in the same transaction as those lines, never below zero (a repayment of more than is owed raises
Overdraft: nothing written). A wallet stored before it was kept has no `owed_minor`: it is summed from the
wallet's ledger entries (reads alike) until its next transaction of any kind sets it.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from bson.int64 import Int64
from pymongo import ASCENDING, DESCENDING, IndexModel, WriteConcern
from pymongo.errors import DuplicateKeyError

from sheda_rt.pagination import paginate

NEWEST = [("_id", DESCENDING)]
#: Commits and the durability barrier wait for the journal (and a majority), whatever the URI chose.
DURABLE = WriteConcern(w="majority", j=True)
WALLET_PREFIX = "wallet:"
REVENUE = "platform:revenue"
CLEARING = "gateway:clearing"
#: What the gateway took back for a top-up that its wallet could no longer pay (the user had spent it): the
#: platform's loss, owed by that user (the top-up reversal's refs name them; the payment is flagged for an admin).
REVERSAL_SHORTFALL = "platform:reversal_shortfall"


def wallet_account(user_id: int) -> str:
    return f"{WALLET_PREFIX}{user_id}"


def wallet_owner(account: str) -> int | None:
    """The user whose wallet the account is, or None for the platform's accounts."""
    return int(account[len(WALLET_PREFIX):]) if account.startswith(WALLET_PREFIX) else None


class Overdraft(Exception):
    """A line would take a wallet below zero: the transaction was not written."""

    def __init__(self, user_id: int, balance_minor: int, needed_minor: int):
        super().__init__(f"wallet {user_id} holds {balance_minor}, needs {needed_minor}")
        self.user_id, self.balance_minor, self.needed_minor = user_id, balance_minor, needed_minor


class LedgerStore:
    TX_INDEXES = [
        IndexModel([("key", ASCENDING)], unique=True, name="key_unique"),
        # `wallet`: the one wallet a transaction touches (every kind moves money between one wallet and
        # the platform). The embedded database reads every entry of the wallet through this index and
        # sorts them, whatever the limit (measured: ~25 ms at 300 entries); MongoDB walks it in order.
        IndexModel([("wallet", ASCENDING), ("_id", DESCENDING)], name="wallet_newest"),
        IndexModel([("reverses", ASCENDING)], name="reverses", partialFilterExpression={"reverses": {"$exists": True}}),
    ]

    def __init__(self, db, ids):
        self.client = db.client
        self.tx = db["ledger_transactions"]
        self.wallets = db["wallets"]
        self.ids = ids
        # One barrier document per process (see `_durable`): no contention between processes.
        self.barrier = db.get_collection("ledger_barrier", write_concern=DURABLE)
        self.barrier_id = f"{socket.gethostname()}:{os.getpid()}"
        self._queues: dict[int, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, user_ids: list[int]):
        """This process's writes to one wallet, one after another. Not for correctness (the
        database's transaction is that, across processes too) but for speed: concurrent
        transactions on one wallet conflict, and each loser retries with backoff, so N at once
        cost O(N^2) attempts (measured: 300 concurrent spends of one wallet took 55 s without
        this, ~2 s with it). Locks are taken in id order and dropped once nobody waits."""
        locks = []
        try:
            for user_id in user_ids:  # sorted by the caller: no two callers wait on each other in a cycle
                lock = self._queues.setdefault(user_id, asyncio.Lock())
                await lock.acquire()
                locks.append((user_id, lock))
            yield
        finally:
            for user_id, lock in reversed(locks):
                lock.release()
                if not lock.locked() and not getattr(lock, "_waiters", None) and self._queues.get(user_id) is lock:
                    del self._queues[user_id]

    async def ensure_indexes(self):
        await self.tx.create_indexes(self.TX_INDEXES)

    # ---- reading ---------------------------------------------------------------
    async def by_key(self, key: str) -> dict | None:
        return await self.tx.find_one({"key": key})

    async def get(self, transaction_id: int) -> dict | None:
        return await self.tx.find_one({"_id": transaction_id})

    async def reversals_of(self, transaction_id: int) -> list[dict]:
        return await self.tx.find({"reverses": transaction_id}).to_list()

    async def cached_balance(self, user_id: int) -> int:
        doc = await self.wallets.find_one({"_id": user_id})
        return int(doc["balance_minor"]) if doc else 0

    async def _owed(self, user_id: int, wallet: dict | None, session=None) -> int:
        """What the user owes, in kobo: the wallet's `owed_minor`, or for a wallet stored before it was kept, the
        platform:reversal_shortfall lines of its ledger entries (read in `session`)."""
        if wallet is not None and wallet.get("owed_minor") is not None:
            return int(wallet["owed_minor"])
        total = 0
        async for doc in self.tx.find({"wallet": user_id, "lines.account": REVERSAL_SHORTFALL}, projection={"lines": 1},
                                      session=session):
            total -= sum(int(line["amount_minor"]) for line in doc["lines"] if line["account"] == REVERSAL_SHORTFALL)
        return total

    async def owed(self, user_id: int) -> int:
        return await self._owed(user_id, await self.wallets.find_one({"_id": user_id}))

    async def wallet_view(self, user_id: int, recent: int) -> tuple[int, int, list[dict], int]:
        """(balance per the ledger, cached balance, newest `recent` transactions, what the user owes), read in one
        snapshot.

        The ledger's own record of this wallet's balance is the `balance_after` its last transaction
        (`last_tx` on the wallet, set in that same transaction) wrote into its line: one look-up, not a
        sum over every entry (measured 0.4 s at 1,000 entries on the embedded database). When that
        record and the cache disagree (never expected), or the last transaction is unknown, the
        balance is summed from every entry: the ledger wins."""
        async def read(session):
            account = wallet_account(user_id)
            wallet = await self.wallets.find_one({"_id": user_id}, session=session)
            cached = int(wallet["balance_minor"]) if wallet else 0
            newest = await self.tx.find({"wallet": user_id}, sort=NEWEST, limit=recent, session=session).to_list()
            if wallet is None and not newest:
                return 0, 0, newest, 0  # never used
            owed = await self._owed(user_id, wallet, session)
            last_id = wallet.get("last_tx") if wallet else None
            last = next((d for d in newest if d["_id"] == last_id), None) if last_id is not None else None
            if last is None and last_id is not None:
                last = await self.tx.find_one({"_id": last_id}, session=session)
            recorded = [line.get("balance_after_minor") for line in (last or {}).get("lines", []) if line["account"] == account]
            if recorded and recorded[-1] is not None and int(recorded[-1]) == cached:
                return cached, cached, newest, owed
            total = 0
            async for doc in self.tx.find({"wallet": user_id}, projection={"lines": 1}, session=session):
                total += sum(int(line["amount_minor"]) for line in doc["lines"] if line["account"] == account)
            return total, cached, newest, owed

        async with self.client.start_session() as session:
            return await session.with_transaction(read)

    async def page(self, user_id: int, page, serialize) -> dict:
        return await paginate(self.tx, {"wallet": user_id}, NEWEST, page, serialize)

    # ---- writing ---------------------------------------------------------------
    async def _ensure_wallet(self, user_id: int, now) -> None:
        # Created by a plain insert (a duplicate means it exists), never by an upsert inside the
        # transaction: concurrent first upserts of one document are a known rough edge of the
        # embedded database (see sheda_rt/database/ids.py).
        try:
            await self.wallets.insert_one({"_id": user_id, "balance_minor": Int64(0), "owed_minor": Int64(0), "created_at": now,
                                           "updated_at": now})
        except DuplicateKeyError:
            pass

    async def post(self, doc: dict, now) -> tuple[dict, bool]:
        """Write one balanced transaction atomically with its wallets' balances (and what the user owes, when it has
        platform:reversal_shortfall lines): (the transaction, written now?). A transaction with the same `key` already
        written is returned as it is (False), whatever it holds: the caller compares. Raises Overdraft (nothing
        written): a wallet below zero, or more repaid than is owed."""
        lines = doc["lines"]
        assert sum(line["amount_minor"] for line in lines) == 0, "a ledger transaction balances"
        owners = sorted({u for u in (wallet_owner(line["account"]) for line in lines) if u is not None})
        existing = await self.by_key(doc["key"])
        if existing is not None:
            await self._durable()
            return existing, False
        for user_id in owners:
            if any(line["amount_minor"] > 0 for line in lines if wallet_owner(line["account"]) == user_id):
                await self._ensure_wallet(user_id, now)
        if len(owners) > 1:  # every kind today moves money between one wallet and the platform
            raise ValueError("a ledger transaction touches at most one wallet")
        record = {**doc, "_id": await self.ids.next("ledger_transactions"), "wallet": owners[0] if owners else None, "created_at": now,
                  "lines": [{"account": line["account"], "amount_minor": Int64(line["amount_minor"])} for line in lines]}

        async def write(session):
            found = await self.tx.find_one({"key": record["key"]}, session=session)
            if found is not None:
                return found, False
            for line in record["lines"]:
                user_id = wallet_owner(line["account"])
                if user_id is None:
                    continue  # the platform's accounts carry no cached balance: they are summed from the ledger
                amount = int(line["amount_minor"])
                guard = {"_id": user_id, "balance_minor": {"$gte": -amount}} if amount < 0 else {"_id": user_id}
                result = await self.wallets.update_one(guard, {"$inc": {"balance_minor": Int64(amount)},
                                                                "$set": {"updated_at": now, "last_tx": record["_id"]}},
                                                       session=session)
                wallet = await self.wallets.find_one({"_id": user_id}, session=session)
                if result.matched_count == 0:
                    raise Overdraft(user_id, int(wallet["balance_minor"]) if wallet else 0, -amount)
                line["balance_after_minor"] = Int64(wallet["balance_minor"])
            owed_change = -sum(int(line["amount_minor"]) for line in record["lines"] if line["account"] == REVERSAL_SHORTFALL)
            if owed_change and record["wallet"] is None:
                raise ValueError("what a user owes moves with a line on their wallet")
            if record["wallet"] is not None:  # its line was written above (even at 0.00), so racing writers conflict
                user_id = record["wallet"]
                wallet = await self.wallets.find_one({"_id": user_id}, session=session)
                if owed_change or wallet.get("owed_minor") is None:  # (a wallet stored before: its figure kept from now on)
                    owed = await self._owed(user_id, wallet, session)
                    if owed + owed_change < 0:
                        raise Overdraft(user_id, owed, -owed_change)
                    await self.wallets.update_one({"_id": user_id}, {"$set": {"owed_minor": Int64(owed + owed_change)}},
                                                  session=session)
            await self.tx.insert_one(record, session=session)
            return record, True

        try:
            async with self._one_at_a_time(owners), self.client.start_session() as session:
                stored, created = await session.with_transaction(write, write_concern=DURABLE)
        except DuplicateKeyError:  # the same key committed by a racing call after our look-up
            stored = await self.by_key(record["key"])
            if stored is None:
                raise
            created = False
        await self._durable()
        return stored, created

    async def _durable(self) -> None:
        """Return only once everything this server committed so far is in its journal.

        A transaction's commit is sent with j: true, and a replica set honours it; the embedded
        database (SecantusDB 0.7) commits a multi-document transaction without syncing its
        journal whatever the write concern says (its commitTransaction ignores it: measured, a
        kill -9 of the database lost the last acknowledged spend while every transaction stayed
        whole). A journal is one sequence, so one journaled single-document write after the
        commit makes the commit durable too; it also covers a transaction found by its key,
        which a racing caller may have committed a moment ago."""
        try:
            await self.barrier.update_one({"_id": self.barrier_id}, {"$inc": {"n": 1}}, upsert=True)
        except DuplicateKeyError:  # two first upserts of this process's document raced: it exists now
            await self.barrier.update_one({"_id": self.barrier_id}, {"$inc": {"n": 1}})

    # ---- the audit -------------------------------------------------------------
    async def snapshot_totals(self) -> tuple[int, dict[str, int], list[dict], dict[int, int], dict[int, int], dict[int, int]]:
        """In one snapshot: (transactions read, each account's sum of lines, the transactions whose
        lines do not sum to zero, each wallet's cached balance, what each user owes per the ledger (their
        transactions' platform:reversal_shortfall lines, negated; nonzero only), each wallet's cached `owed_minor`
        (wallets that keep one))."""
        async def read(session):
            count, totals, unbalanced, owed = 0, {}, [], {}
            async for doc in self.tx.find({}, projection={"lines": 1, "wallet": 1}, session=session):
                count += 1
                total = 0
                for line in doc["lines"]:
                    amount = int(line["amount_minor"])
                    totals[line["account"]] = totals.get(line["account"], 0) + amount
                    total += amount
                    if line["account"] == REVERSAL_SHORTFALL and doc.get("wallet") is not None:
                        owed[doc["wallet"]] = owed.get(doc["wallet"], 0) - amount
                if total != 0:
                    unbalanced.append({"transaction_id": doc["_id"], "sum_minor": total})
            cached, cached_owed = {}, {}
            async for wallet in self.wallets.find({}, projection={"balance_minor": 1, "owed_minor": 1}, session=session):
                cached[wallet["_id"]] = int(wallet["balance_minor"])
                if wallet.get("owed_minor") is not None:
                    cached_owed[wallet["_id"]] = int(wallet["owed_minor"])
            return count, totals, unbalanced, cached, {u: v for u, v in owed.items() if v}, cached_owed

        async with self.client.start_session() as session:
            return await session.with_transaction(read)
