"""The wallet across processes (issue 18 §2): 50 concurrent spends from one wallet, made by two
processes at once, never take it below zero, and the ledger audit stays ok.

The spends are WalletService.spend, the call every paying feature makes (promotions), run by two
separate Python processes against the session's embedded database: what keeps the balance from
going below zero must be in the database (the conditional debit inside one multi-document
transaction, sheda_rt/wallet/ledger.py), since neither process sees the other's memory.

And a kill -9 of the database in the middle of spends (a private database, not the session's):
every transaction comes back whole, no acknowledged spend is lost (checked to fail without the
journaled write after each commit: SecantusDB's commit does not sync its journal), and retrying
every key charges the rest exactly once."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from sheda_rt.clock import Clock
from sheda_rt.database.connection import connect
from sheda_rt.database.ids import IdAllocator
from sheda_rt.wallet.ledger import LedgerStore
from sheda_rt.wallet.service import InsufficientFunds, WalletService
from tests.listing_helpers import create_property
from tests.paystack_server import SECRET, sign
from tests.redis_support import Remote, ServerProcess, redis_server, running_pair, server_env, shared_dir  # noqa: F401  (module fixtures)
from tests.support import eventually
from tests.test_multiprocess_admin import admin_on
from tests.test_payments import paystack  # noqa: F401  (the local gateway fixture)

ROOT = Path(__file__).resolve().parent.parent

#: One spender process: connects, waits for the go file (so both start together), makes its
#: spends concurrently, prints what each got.
SPENDER = r"""
import asyncio, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from sheda_rt.clock import Clock
from sheda_rt.database.connection import connect
from sheda_rt.database.ids import IdAllocator
from sheda_rt.wallet.ledger import LedgerStore
from sheda_rt.wallet.service import InsufficientFunds, WalletService

async def main(uri, db_name, user_id, name, count, go):
    client, db = connect(uri, db_name)
    wallet = WalletService(LedgerStore(db, IdAllocator(db)), clock=Clock())
    await db.command("ping")
    print("ready", flush=True)
    while not os.path.exists(go):
        await asyncio.sleep(0.005)
    async def one(i):
        try:
            tx = await wallet.spend(user_id, 3000, idempotency_key=f"{name}-{i}", kind="spend", memo="race", refs={})
            return ["paid", tx["id"]]
        except InsufficientFunds:
            return ["refused", None]
    results = await asyncio.gather(*(one(i) for i in range(count)))
    print(json.dumps(results), flush=True)
    await client.close()

asyncio.run(main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), sys.argv[7]))
"""


async def test_fifty_spends_from_two_processes_never_take_the_wallet_below_zero(embedded_db, tmp_path):
    db_name = f"sheda_mp_wallet_{uuid.uuid4().hex[:8]}"
    client, db = connect(embedded_db.uri, db_name)
    try:
        ledger = LedgerStore(db, IdAllocator(db))
        await ledger.ensure_indexes()
        wallet = WalletService(ledger, clock=Clock())
        user_id = 41
        await wallet.credit_topup(user_id, 100_000, reference="mp_topup_1")  # 1,000.00: room for 33 spends of 30.00
        go = tmp_path / "go"
        procs = [subprocess.Popen([sys.executable, "-c", SPENDER, str(ROOT), embedded_db.uri, db_name, str(user_id), name, "25", str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
        try:
            for proc in procs:  # both connected before either starts
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
            go.write_text("go")
            outputs = [await asyncio.to_thread(proc.communicate, timeout=240) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        results = []
        for (out, err), proc in zip(outputs, procs):
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        paid = [r for rs in results for r in rs if r[0] == "paid"]
        assert len(paid) == 33 and len(paid) + sum(r[0] == "refused" for rs in results for r in rs) == 50
        assert all(any(r[0] == "paid" for r in rs) for rs in results)  # both processes really spent
        assert await wallet.balance(user_id) == 1000
        report = await wallet.audit()
        assert report["ok"] is True and report["mismatches"] == [], report
        assert report["transactions"] == 34 and report["wallets_total"] == "10.00"
        assert report["platform"] == {"gateway:clearing": "-1000.00", "platform:revenue": "990.00"}
        assert (await wallet.wallet(user_id))["balance"] == "10.00"
    finally:
        await client.drop_database(db_name)
        await client.close()


#: A spender that reports each spend the moment the database acknowledged it, and keeps going
#: until it is killed (the test kills the database under it, then it).
STREAMING_SPENDER = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from pymongo.errors import PyMongoError
from sheda_rt.clock import Clock
from sheda_rt.database.connection import connect
from sheda_rt.database.ids import IdAllocator
from sheda_rt.wallet.ledger import LedgerStore
from sheda_rt.wallet.service import InsufficientFunds, WalletService

async def main(uri, db_name, user_id, count):
    client, db = connect(uri, db_name)
    wallet = WalletService(LedgerStore(db, IdAllocator(db)), clock=Clock())
    sem = asyncio.Semaphore(10)
    async def one(i):
        async with sem:
            try:
                tx = await wallet.spend(user_id, 100, idempotency_key=f"k-{i}", kind="spend", memo="", refs={})
                print(f"paid k-{i} {tx['id']}", flush=True)
            except (InsufficientFunds, PyMongoError):
                pass
    await asyncio.gather(*(one(i) for i in range(count)))

asyncio.run(main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


async def test_the_database_killed_mid_spends_leaves_every_transaction_whole(tmp_path):
    """kill -9 of the database while spends are committing: after its restart every acknowledged spend is
    in the ledger, every wallet equals its ledger, and retrying every key charges the rest exactly once."""
    from sheda_rt.database.embedded import EmbeddedDatabase

    db_proc = EmbeddedDatabase(tmp_path / "data")
    db_proc.start()
    user_id, keys = 7, 300
    spender = None
    try:
        client, db = connect(db_proc.uri, "crash")
        ledger = LedgerStore(db, IdAllocator(db))
        await ledger.ensure_indexes()
        wallet = WalletService(ledger, clock=Clock())
        await wallet.credit_topup(user_id, 20_000, reference="crash_topup")  # 200.00: 200 spends of 1.00
        spender = subprocess.Popen([sys.executable, "-c", STREAMING_SPENDER, str(ROOT), db_proc.uri, "crash", str(user_id), str(keys)],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        acknowledged: dict[str, int] = {}
        while len(acknowledged) < 40:  # well into the spends, with ten in flight
            line = await asyncio.to_thread(spender.stdout.readline)
            assert line, "the spender stopped before the kill"
            _, key, tx_id = line.split()
            acknowledged[key] = int(tx_id)
        db_proc.process.kill()  # kill -9 of the database
        db_proc.process.wait()
        spender.kill()
        rest, _ = await asyncio.to_thread(spender.communicate)
        for line in rest.splitlines():  # acknowledged before the database died
            _, key, tx_id = line.split()
            acknowledged[key] = int(tx_id)
        await client.close()

        assert await asyncio.to_thread(db_proc.recover)  # same port, same storage: WiredTiger replays its journal
        client, db = connect(db_proc.uri, "crash")
        ledger = LedgerStore(db, IdAllocator(db))
        wallet = WalletService(ledger, clock=Clock())
        report = await wallet.audit()
        assert report["ok"] is True and report["mismatches"] == [], report
        spent = {doc["idempotency_key"]: doc["_id"] async for doc in db["ledger_transactions"].find({"kind": "spend"})}
        lost = {k: v for k, v in acknowledged.items() if spent.get(k) != v}
        assert not lost, (len(lost), len(acknowledged), len(spent), sorted(lost.items())[:10], sorted(spent.items())[:5])
        assert await wallet.balance(user_id) == 20_000 - 100 * len(spent)

        # Every client retries every key: what was charged is answered again, the rest is charged once.
        async def retry(i):
            try:
                return (await wallet.spend(user_id, 100, idempotency_key=f"k-{i}", kind="spend", memo="", refs={}))["id"]
            except InsufficientFunds:
                return None
        answers = await asyncio.gather(*(retry(i) for i in range(keys)))
        assert all(answers[int(key[2:])] == tx_id for key, tx_id in spent.items())
        assert sum(a is not None for a in answers) == 200 and await wallet.balance(user_id) == 0
        report = await wallet.audit()
        assert report["ok"] is True and report["transactions"] == 201, report
        await client.close()
    finally:
        if spender is not None and spender.poll() is None:
            spender.kill()
        db_proc.stop()


@pytest.fixture
def gateway_pair(embedded_db, redis_server, shared_dir, paystack):
    """Two `python run.py` servers (one Redis, one database) whose gateway is the local Paystack, with
    bumps priced 30.00. B runs the payment reconciliation every 1.2 s, A only at its start (within this test):
    what a webhook on A leaves unfinished, B finishes, as in a deployment where the processes' passes fall apart."""
    env = server_env(embedded_db, redis_server, shared_dir, f"sheda_mp_{uuid.uuid4().hex[:8]}", PAYSTACK_SECRET_KEY=SECRET,
                     PAYSTACK_BASE_URL=paystack.base_url, PROMOTION_BUMP_PRICE="30.00", ACCESS_TOKEN_MINUTES=60)
    a = ServerProcess({**env, "PAYMENT_RECONCILE_INTERVAL_MINUTES": "600"}, shared_dir, "wallet_a")
    b = ServerProcess({**env, "PAYMENT_RECONCILE_INTERVAL_MINUTES": "0.02"}, shared_dir, "wallet_b")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


async def test_fifty_bumps_through_two_servers_charge_a_wallet_to_its_last_kobo_and_no_further(gateway_pair, paystack,
                                                                                            embedded_db):
    """The whole path a client takes: a top-up through the gateway (checkout on A, webhook on B), then 50 bumps
    at once, half through each server, each with its own Idempotency-Key. Then the gateway gives a second top-up
    back through 20 refund and lost-chargeback events at once, half to each server, adding up to twice the top-up:
    the processes reserve on the payment document, so together they take back exactly what it credited. The payer
    is told once of each credit and each reversal (ba3176b), whichever process finishes it: a webhook on A, B's
    reconciliation, a redelivery to either."""
    a, b = (Remote(s) for s in gateway_pair)
    agent, admin = await a.signup("agent"), await admin_on(b)
    paystack.webhook_url = b.server.base_url + "/api/v1/webhooks/paystack"
    r = await a.api.post("/api/v1/payments", {"purpose": "wallet_topup", "target_id": agent.id, "amount": "1000.00"},
                         token=agent.token)
    assert r.status == 201, r
    paystack.pay(r.json["reference"])
    assert (await paystack.deliver(paystack.event_body(r.json["reference"]))).code == 200
    assert (await a.api.get("/api/v1/wallet", token=agent.token)).json["balance"] == "1000.00"
    [credited] = await wallet_notes(a, agent)
    assert credited["kind"] == "wallet.credited" and credited["data"]["amount"] == "1000.00", credited
    prop = await create_property(a, agent)

    async def bump(server, key):
        # As a client does: a 409 concurrent_update (the listing changed under the promotion) is sent again with
        # the same key, which never charges twice.
        for _ in range(20):
            r = await server.api.post(f"/api/v1/properties/{prop['id']}/promotions", {"kind": "bump"}, token=agent.token,
                                      headers={"Idempotency-Key": key})
            if not (r.status == 409 and r.json["code"] == "concurrent_update"):
                return r
        return r

    keys = [uuid.uuid4().hex for _ in range(50)]
    answers = await asyncio.gather(*(bump(a if i % 2 else b, key) for i, key in enumerate(keys)))
    assert sorted(x.status for x in answers) == [201] * 33 + [402] * 17, [x for x in answers if x.status not in (201, 402)]
    assert {x.json["code"] for x in answers if x.status == 402} == {"insufficient_funds"}
    assert {i % 2 for i, x in enumerate(answers) if x.status == 201} == {0, 1}  # both servers charged some
    for server in (a, b):
        assert (await server.api.get("/api/v1/wallet", token=agent.token)).json["balance"] == "10.00"
    # A retry through the other server answers the same and charges nothing.
    i = next(i for i, x in enumerate(answers) if x.status == 201)
    again = await bump(b if i % 2 else a, keys[i])
    assert again.status == 201 and again.json == answers[i].json
    entries = (await b.api.get("/api/v1/wallet/transactions", token=agent.token, params={"limit": 100})).json["items"]
    assert [e["kind"] for e in entries].count("spend:promotion") == 33 and len(entries) == 34
    assert (await a.api.get("/api/v1/admin/ledger/audit", token=agent.token)).status == 403
    for server in (a, b):
        audit = await server.api.get("/api/v1/admin/ledger/audit", token=admin.token)
        assert audit.status == 200 and audit.json["ok"] is True and audit.json["mismatches"] == [], audit.json
        assert audit.json["platform"] == {"gateway:clearing": "-1000.00", "platform:revenue": "990.00"}

    # ---- reversals of one top-up racing in two processes ----
    r = await a.api.post("/api/v1/payments", {"purpose": "wallet_topup", "target_id": agent.id, "amount": "1000.00"},
                         token=agent.token)
    assert r.status == 201, r
    ref = r.json["reference"]
    paystack.pay(ref)
    assert (await paystack.deliver(paystack.event_body(ref))).code == 200
    bodies = [paystack.refund(ref, 10_000) if i % 2 else
              paystack.dispute_body(ref, 55_000 + i, "charge.dispute.resolve", resolution="merchant-accepted", refund_amount=10_000)
              for i in range(20)]

    answers = await asyncio.gather(*(deliver_to(a if i % 4 < 2 else b, body) for i, body in enumerate(bodies)))
    assert [x.code for x in answers] == [200] * 20
    entries = (await a.api.get("/api/v1/wallet/transactions", token=agent.token, params={"limit": 100})).json["items"]
    reversals = [e for e in entries if e["kind"] == "topup_reversal"]
    assert len(reversals) == 10 and {e["amount"] for e in reversals} == {"-100.00"}, reversals
    assert {e["refs"]["shortfall"] for e in reversals} == {"0.00"}
    told = [n for n in await wallet_notes(b, agent) if n["kind"] == "wallet.reversed"]  # one per reversal, none per delivery
    assert len(told) == 10 and {n["data"]["amount"] for n in told} == {"100.00"} and {n["data"]["reference"] for n in told} == {ref}
    for server in (a, b):
        assert (await server.api.get("/api/v1/wallet", token=agent.token)).json["balance"] == "10.00"
        audit = await server.api.get("/api/v1/admin/ledger/audit", token=admin.token)
        assert audit.status == 200 and audit.json["ok"] is True and audit.json["mismatches"] == [], audit.json
        assert audit.json["platform"] == {"gateway:clearing": "-1000.00", "platform:revenue": "990.00"}

    # ---- the payer told once of each credit, whichever process finishes it (ba3176b) ----
    payer = await a.signup("client")
    payer_b = await b.ws(payer.token)
    mongo = AsyncMongoClient(embedded_db.uri)
    db = mongo[a.server.env["MONGODB_DB"]]
    try:
        async def checkout(naira: str) -> str:
            r = await a.api.post("/api/v1/payments", {"purpose": "wallet_topup", "target_id": payer.id, "amount": naira},
                                 token=payer.token)
            assert r.status == 201, r
            paystack.pay(r.json["reference"])
            return r.json["reference"]

        async def left_untold(ref: str) -> None:
            """What a process leaves that died between the top-up's credit and telling the payer: the credit written,
            the payment succeeded but not recorded applied, no notification."""
            payment = await db["payments"].find_one({"reference": ref})
            wallet = WalletService(LedgerStore(db, IdAllocator(db)), clock=Clock())
            _, created = await wallet.credit_topup(payer.id, int(payment["amount_minor"]), reference=ref)
            assert created
            moved = await db["payments"].update_one({"_id": payment["_id"], "status": {"$in": ["initialized", "pending"]}}, {
                "$set": {"status": "succeeded", "succeeded_at": payment["created_at"], "applied": False},
                "$unset": {"open_key": ""}})
            assert moved.modified_count == 1

        async def reconciled_by_b() -> None:
            """Two more of B's reconciliation passes have ended (a whole one began after this was called)."""
            async def runs() -> float:
                return (await b.metrics()).get(("sheda_job_runs_total", (("job", "payment_reconciliation"), ("outcome", "ok"))), 0)
            start = await runs()
            await eventually(lambda: _more(runs, start + 2), "two more reconciliation passes on B", timeout=60)

        async def applied(ref: str) -> bool:
            return bool((await db["payments"].find_one({"reference": ref}))["applied"])

        # The webhook on A credits and tells; B's reconciliation and a redelivery to B tell nothing more.
        paystack.webhook_url = a.server.base_url + "/api/v1/webhooks/paystack"
        ref1 = await checkout("2000.00")
        assert (await paystack.deliver(paystack.event_body(ref1))).code == 200
        assert await applied(ref1)
        await reconciled_by_b()
        paystack.webhook_url = b.server.base_url + "/api/v1/webhooks/paystack"
        assert (await paystack.deliver(paystack.event_body(ref1))).code == 200
        # A credit whose process died before telling: B's reconciliation finishes it and tells; the webhook's
        # redelivery to A afterwards tells nothing more.
        ref2 = await checkout("3000.00")
        await left_untold(ref2)
        await eventually(lambda: applied(ref2), "B's reconciliation finishing the untold credit", timeout=60)
        paystack.webhook_url = a.server.base_url + "/api/v1/webhooks/paystack"
        assert (await paystack.deliver(paystack.event_body(ref2))).code == 200
        # The same, with deliveries to A and to B at once racing B's reconciliation.
        ref3 = await checkout("4000.00")
        await left_untold(ref3)
        answers = await asyncio.gather(*(deliver_to(server, paystack.event_body(ref3)) for server in (a, b, a, b)))
        assert [x.code for x in answers] == [200] * 4
        await eventually(lambda: applied(ref3), "the untold credit finished", timeout=60)
        await reconciled_by_b()

        expected = {ref1: ("2000.00", "2000.00"), ref2: ("3000.00", "5000.00"), ref3: ("4000.00", "9000.00")}
        for server in (a, b):
            notes = await wallet_notes(server, payer)
            assert sorted(n["data"]["reference"] for n in notes) == sorted(expected), notes
            for n in notes:
                assert n["kind"] == "wallet.credited" and (n["data"]["amount"], n["data"]["balance"]) == expected[n["data"]["reference"]], n
            events = await server.api.get("/api/v1/events", params={"after_seq": 0, "limit": 100}, token=payer.token)
            told = [e["data"]["reference"] for e in events.json["items"] if e.get("type") == "notification" and e.get("kind") == "wallet.credited"]
            assert sorted(told) == sorted(expected), events.json
        await payer_b.wait_for(lambda f: len([x for x in payer_b.frames if x.get("kind") == "wallet.credited"]) >= 3, timeout=15)
        await payer_b.send({"type": "ping"})
        await payer_b.wait_type("pong", 10)
        live = [f["data"]["reference"] for f in payer_b.frames if f.get("kind") == "wallet.credited"]
        assert sorted(live) == sorted(expected), live
        assert await db["notifications"].count_documents({"user_id": payer.id, "kind": "wallet.credited"}) == 3
        assert (await b.api.get("/api/v1/wallet", token=payer.token)).json["balance"] == "9000.00"
        audit = await a.api.get("/api/v1/admin/ledger/audit", token=admin.token)
        assert audit.status == 200 and audit.json["ok"] is True and audit.json["mismatches"] == [], audit.json
    finally:
        payer_b.close()
        await mongo.close()


async def _more(read, than: float) -> bool:
    return await read() >= than


async def wallet_notes(remote: Remote, user) -> list[dict]:
    r = await remote.api.get("/api/v1/notifications", token=user.token, params={"limit": 100})
    assert r.status == 200, r
    return [n for n in r.json["items"] if n["kind"].startswith("wallet.")]


async def deliver_to(server: Remote, body: bytes):
    """A signed webhook delivery to one server, as Paystack makes it."""
    req = HTTPRequest(server.server.base_url + "/api/v1/webhooks/paystack", method="POST", body=body, request_timeout=60,
                      headers={"Content-Type": "application/json", "x-paystack-signature": sign(body)})
    return await AsyncHTTPClient().fetch(req, raise_error=False)
