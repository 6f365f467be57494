"""Payment to contract, as the seed describes it: the whole flow with both sockets open, every wrong
state, bad input, the activation race, and expiry with a moved clock and two jobs at once."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from sheda_rt.clock import format_ts
from tests.listing_helpers import confirmed_viewing, create_property, next_slot, open_window, set_bank, snapshot, word

CT = "/api/v1/contracts"


@pytest.fixture
def settings_overrides():
    # The clock moves by months with sockets open, waiting for contract.expired on them: the
    # tokens must outlive the moves, or the sockets are (rightly) closed for token expiry first.
    return {"access_token_minutes": 3 * 365 * 24 * 60}


async def rental_ready(sheda, *, listing_type="rent", bank=True, clients=1, **over):
    """An agent with bank details, a window and a listing; clients with confirmed viewings of it."""
    agent = await sheda.signup("agent")
    if bank:
        await set_bank(sheda, agent)
    prop = await create_property(sheda, agent, listing_type=listing_type, **over)
    when = next_slot(sheda.ctx.clock.now(), days_ahead=1, hour=9)
    await open_window(sheda, agent, when, "09:00", "17:00")
    people = []
    for i in range(clients):
        client = await sheda.signup("client")
        appt = await confirmed_viewing(sheda, agent, client, prop, when + timedelta(minutes=30 * i))
        people.append((client, appt))
    return agent, prop, people


async def test_seed_flow_end_to_end_with_both_sockets_and_every_live_event(sheda):
    agent = await sheda.signup("agent")
    client = await sheda.signup("client")
    agent_ws = await sheda.ws(agent.token)
    client_ws = await sheda.ws(client.token)

    # The agent lists a flat, opens Monday-to-Sunday hours and sets bank details.
    await set_bank(sheda, agent)
    w = word()
    prop = await create_property(sheda, agent, location=f"{w} Lekki Phase 1", price="1200000.00", listing_type="rent")
    when = next_slot(sheda.ctx.clock.now(), days_ahead=1, hour=11)
    await open_window(sheda, agent, when, "10:00", "16:00")

    # The client finds it, likes it, and books a viewing.
    found = await sheda.api.get("/api/v1/properties", params={"location": f"{w} lekki"})
    assert [p["id"] for p in found.json["items"]] == [prop["id"]]
    assert (await sheda.api.post(f"/api/v1/properties/{prop['id']}/favourite", token=client.token)).status == 201
    slots = await sheda.api.get(f"/api/v1/agents/{agent.id}/availability")
    assert slots.json[0]["start_time"] == "10:00"
    r = await sheda.api.post("/api/v1/appointments", {"property_id": prop["id"], "scheduled_at": when.isoformat()}, token=client.token)
    assert r.status == 201, r
    appt = r.json
    n = await agent_ws.wait_type("notification", kind="appointment.booked")
    assert n["data"]["appointment_id"] == appt["id"] and n["is_read"] is False
    ev = await agent_ws.wait_type("appointment.booked")
    assert ev["appointment"]["id"] == appt["id"] and ev["appointment"]["status"] == "pending"
    assert (await client_ws.wait_type("appointment.booked"))["appointment"]["id"] == appt["id"]  # the actor's own screens too

    # The agent confirms.
    assert (await sheda.api.patch(f"/api/v1/appointments/{appt['id']}/confirm", token=agent.token)).status == 200
    n = await client_ws.wait_type("notification", kind="appointment.confirmed")
    assert n["data"]["status"] == "confirmed"
    assert (await client_ws.wait_type("appointment.confirmed"))["appointment"]["status"] == "confirmed"

    # Make Payment: the contract shows the agent's account details.
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    assert r.status == 201, r
    contract = r.json
    assert contract["status"] == "awaiting_payment" and contract["amount"] == "1200000.00" and contract["contract_type"] == "rent"
    assert contract["account_details"]["account_number"] == "0123456789" and contract["account_details"]["bank_name"] == "Sheda Bank"
    assert contract["term_months"] == 12 and contract["is_active"] is False
    cid = contract["id"]
    assert (await agent_ws.wait_type("notification", kind="contract.created"))["data"]["contract_id"] == cid
    assert (await agent_ws.wait_type("contract.created"))["contract"]["id"] == cid

    # "I have made payment" → the agent declines (not received) → the client says it again → the agent accepts.
    r = await sheda.api.patch(f"{CT}/{cid}/payment-sent", token=client.token)
    assert r.status == 200 and r.json["status"] == "payment_pending"
    await agent_ws.wait_type("notification", kind="contract.payment_sent")
    assert (await agent_ws.wait_type("contract.payment_sent"))["contract"]["status"] == "payment_pending"
    r = await sheda.api.patch(f"{CT}/{cid}/decline-payment", token=agent.token)
    assert r.status == 200 and r.json["status"] == "awaiting_payment"
    await client_ws.wait_type("notification", kind="contract.declined")
    assert (await client_ws.wait_type("contract.declined"))["contract"]["status"] == "awaiting_payment"
    assert (await sheda.api.patch(f"{CT}/{cid}/payment-sent", token=client.token)).status == 200
    r = await sheda.api.patch(f"{CT}/{cid}/confirm-payment", token=agent.token)
    assert r.status == 200, r
    active = r.json
    assert active["status"] == "active" and active["is_active"] is True
    now = sheda.ctx.clock.now()
    assert active["start_date"][:16] == format_ts(now)[:16]
    assert (await client_ws.wait_type("notification", kind="contract.confirmed"))["data"]["status"] == "active"
    assert (await client_ws.wait_type("contract.confirmed"))["contract"]["status"] == "active"
    assert (await sheda.api.get(f"/api/v1/properties/{prop['id']}")).json["status"] == "rented"
    # rented: nobody can book or contract it now
    other = await sheda.signup("client")
    r = await sheda.api.post("/api/v1/appointments", {"property_id": prop["id"], "scheduled_at": (when + timedelta(hours=1)).isoformat()},
                             token=other.token)
    assert r.status == 409 and r.json["code"] == "property_unavailable"

    # Both see the contract; notifications are listed and can be read.
    assert (await sheda.api.get(f"{CT}/{cid}", token=client.token)).json["status"] == "active"
    assert [c["id"] for c in (await sheda.api.get(CT, token=agent.token)).json["items"]] == [cid]
    notes = await sheda.api.get("/api/v1/notifications", token=client.token)
    kinds = [x["kind"] for x in notes.json["items"]]
    assert kinds == ["contract.confirmed", "contract.declined", "appointment.confirmed"] and notes.json["unread_count"] == 3
    first = notes.json["items"][0]
    r = await sheda.api.patch(f"/api/v1/notifications/{first['id']}/read", token=client.token)
    assert r.status == 200 and r.json["is_read"] is True and r.json["read_at"]
    assert (await sheda.api.patch(f"/api/v1/notifications/{first['id']}/read", token=agent.token)).status == 404
    unread = await sheda.api.get("/api/v1/notifications", params={"unread": "true"}, token=client.token)
    assert [x["kind"] for x in unread.json["items"]] == ["contract.declined", "appointment.confirmed"]
    r = await sheda.api.post("/api/v1/notifications/read-all", token=client.token)
    assert r.status == 200 and r.json == {"marked_read": 2}
    assert (await sheda.api.get("/api/v1/notifications", params={"unread": "true"}, token=client.token)).json["items"] == []
    agent_kinds = [x["kind"] for x in (await sheda.api.get("/api/v1/notifications", token=agent.token)).json["items"]]
    assert agent_kinds == ["contract.payment_sent", "contract.payment_sent", "contract.created", "appointment.booked"]

    # Twelve months later the job expires it: inactive, the property available again, both told live.
    sheda.ctx.clock.advance(days=367)
    assert await sheda.ctx.contract_expiry.run() >= 1
    assert (await client_ws.wait_type("contract.expired"))["contract"]["status"] == "expired"
    assert (await agent_ws.wait_type("contract.expired"))["contract"]["is_active"] is False
    await client_ws.wait_type("notification", kind="contract.expired")
    await agent_ws.wait_type("notification", kind="contract.expired")
    assert (await snapshot(sheda, "properties", prop["id"]))["status"] == "available"
    stored = await snapshot(sheda, "contracts", cid)
    assert stored["status"] == "expired" and stored["is_active"] is False and stored["property_released"] is True
    agent_ws.close()
    client_ws.close()


async def test_every_wrong_state_and_wrong_party_is_refused_without_change(sheda):
    agent, prop, [(client, appt)] = await rental_ready(sheda)
    other_agent = await sheda.signup("agent")
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 6}, token=client.token)
    assert r.status == 201
    cid = r.json["id"]

    async def refused(method_path_token, status, code=None):
        path, token = method_path_token
        before = await snapshot(sheda, "contracts", cid)
        r = await sheda.api.patch(path, token=token)
        assert r.status == status, (path, r)
        if code:
            assert r.json["code"] == code, r.json
        assert await snapshot(sheda, "contracts", cid) == before

    # awaiting_payment: only payment-sent and cancel are possible
    await refused((f"{CT}/{cid}/confirm-payment", agent.token), 409, "wrong_state")
    await refused((f"{CT}/{cid}/decline-payment", agent.token), 409, "wrong_state")
    await refused((f"{CT}/{cid}/payment-sent", agent.token), 403)           # agent scope on a client route
    await refused((f"{CT}/{cid}/confirm-payment", client.token), 403)       # client scope on an agent route
    await refused((f"{CT}/{cid}/confirm-payment", other_agent.token), 404)  # not a party
    await refused((f"{CT}/{cid}/expire", agent.token), 403)                 # admins only
    await refused((f"{CT}/999999999/payment-sent", client.token), 404)
    admin = await sheda.admin()
    await refused((f"{CT}/{cid}/expire", admin.token), 409, "wrong_state")
    assert (await sheda.api.get(f"{CT}/{cid}", token=other_agent.token)).status == 404
    assert (await sheda.api.get(f"{CT}/{cid}", token=admin.token)).status == 200

    assert (await sheda.api.patch(f"{CT}/{cid}/payment-sent", token=client.token)).status == 200
    await refused((f"{CT}/{cid}/payment-sent", client.token), 409, "wrong_state")
    assert (await sheda.api.patch(f"{CT}/{cid}/confirm-payment", token=agent.token)).status == 200
    # active: no payment steps, no cancel
    for path, token in ((f"{CT}/{cid}/payment-sent", client.token), (f"{CT}/{cid}/confirm-payment", agent.token),
                        (f"{CT}/{cid}/decline-payment", agent.token), (f"{CT}/{cid}/cancel", client.token)):
        await refused((path, token), 409, "wrong_state")
    r = await sheda.api.patch(f"{CT}/{cid}/expire", token=admin.token)  # an admin may end it now
    assert r.status == 200 and r.json["status"] == "expired"
    assert (await snapshot(sheda, "properties", prop["id"]))["status"] == "available"
    for path, token in ((f"{CT}/{cid}/expire", admin.token), (f"{CT}/{cid}/cancel", client.token),
                        (f"{CT}/{cid}/payment-sent", client.token)):
        await refused((path, token), 409, "wrong_state")


async def test_cancel_before_active_and_the_open_contract_rule(sheda):
    agent, prop, [(client, appt)] = await rental_ready(sheda)
    body = {"appointment_id": appt["id"], "term_months": 3}
    cid = (await sheda.api.post(f"{CT}/{prop['id']}", body, token=client.token)).json["id"]
    r = await sheda.api.post(f"{CT}/{prop['id']}", body, token=client.token)
    assert r.status == 409 and r.json["code"] == "contract_exists"
    r = await sheda.api.patch(f"{CT}/{cid}/cancel", token=client.token)
    assert r.status == 200 and r.json["status"] == "cancelled"
    # cancelled frees the way for a new one; cancel from payment_pending works too
    cid2 = (await sheda.api.post(f"{CT}/{prop['id']}", body, token=client.token)).json["id"]
    await sheda.api.patch(f"{CT}/{cid2}/payment-sent", token=client.token)
    r = await sheda.api.patch(f"{CT}/{cid2}/cancel", token=client.token)
    assert r.status == 200 and r.json["status"] == "cancelled"
    assert (await sheda.api.patch(f"{CT}/{cid2}/confirm-payment", token=agent.token)).status == 409
    listed = await sheda.api.get(CT, params={"status": "cancelled"}, token=client.token)
    assert [c["id"] for c in listed.json["items"]] == [cid2, cid]
    assert (await sheda.api.get(CT, params={"status": "nope"}, token=client.token)).status == 422


async def test_bad_contract_requests_change_nothing(sheda):
    agent, prop, [(client, appt), (client2, appt2)] = await rental_ready(sheda, clients=2)
    sale_agent, sale, [(buyer, sale_appt)] = await rental_ready(sheda, listing_type="sale", price="50000000")
    _, nobank, [(nb_client, nb_appt)] = await rental_ready(sheda, bank=False)
    pending_client = await sheda.signup("client")
    when = next_slot(sheda.ctx.clock.now(), days_ahead=1, hour=15)
    pending = await sheda.api.post("/api/v1/appointments", {"property_id": prop["id"], "scheduled_at": when.isoformat()},
                                   token=pending_client.token)
    other_prop = await create_property(sheda, agent, title="another")
    before = await sheda.ctx.db["contracts"].count_documents({})

    cases = [
        (prop["id"], {"appointment_id": appt["id"]}, client, 422),                          # rent needs term_months
        (prop["id"], {"appointment_id": appt["id"], "term_months": 0}, client, 422),
        (prop["id"], {"appointment_id": appt["id"], "term_months": 121}, client, 422),
        (prop["id"], {"appointment_id": appt["id"], "term_months": "12"}, client, 422),
        (prop["id"], {"appointment_id": appt["id"], "term_months": 12.0}, client, 422),
        (prop["id"], {"appointment_id": str(appt["id"]), "term_months": 12}, client, 422),
        (prop["id"], {"term_months": 12}, client, 422),
        (sale["id"], {"appointment_id": sale_appt["id"], "term_months": 12}, buyer, 422),   # sales take no term
        (other_prop["id"], {"appointment_id": appt["id"], "term_months": 12}, client, 422),  # viewing of another listing
        (prop["id"], {"appointment_id": appt2["id"], "term_months": 12}, client, 404),      # someone else's viewing
        (prop["id"], {"appointment_id": 999999999, "term_months": 12}, client, 404),
        (999999999, {"appointment_id": appt["id"], "term_months": 12}, client, 404),
        (prop["id"], {"appointment_id": pending.json["id"], "term_months": 12}, pending_client, 409),  # not confirmed
        (nobank["id"], {"appointment_id": nb_appt["id"], "term_months": 12}, nb_client, 409),         # no bank details
        (prop["id"], {"appointment_id": appt["id"], "term_months": 12}, agent, 403),        # agent scope
    ]
    for pid, body, who, status in cases:
        r = await sheda.api.post(f"{CT}/{pid}", body, token=who.token)
        assert r.status == status, (pid, body, r)
    r = await sheda.api.post(f"{CT}/{nobank['id']}", {"appointment_id": nb_appt["id"], "term_months": 12}, token=nb_client.token)
    assert r.json["code"] == "agent_account_missing"
    assert (await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12})).status == 401
    assert await sheda.ctx.db["contracts"].count_documents({}) == before

    r = await sheda.api.post(f"{CT}/{sale['id']}", {"appointment_id": sale_appt["id"]}, token=buyer.token)
    assert r.status == 201 and r.json["contract_type"] == "sale" and r.json["end_date"] is None and r.json["amount"] == "50000000.00"
    # a sold / rented property cannot be contracted
    await sheda.ctx.db["properties"].update_one({"_id": prop["id"]}, {"$set": {"status": "rented"}})
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    assert r.status == 409 and r.json["code"] == "property_unavailable"


async def test_no_payment_starts_with_a_deactivated_agent(sheda):
    # A confirmed viewing, then an admin bans the agent: the client must not be handed the banned
    # account's bank details and told to pay, for a payment nobody can confirm.
    agent, prop, [(client, appt)] = await rental_ready(sheda)
    admin = await sheda.admin()
    assert (await sheda.api.patch(f"/api/v1/admin/users/{agent.id}", {"is_active": False}, token=admin.token)).status == 200
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    assert r.status == 404 and r.json["code"] == "property_not_found", r  # the listing left the market with its agent
    # listed again by an admin while the agent is still deactivated: still no payment. The viewing was
    # closed with the account (cancel_reason agent_inactive); one the closing has not reached yet is refused too.
    assert (await sheda.api.patch(f"/api/v1/properties/{prop['id']}/status", {"active": True}, token=admin.token)).status == 200
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    assert r.status == 409 and r.json["code"] == "appointment_not_confirmed" and "account_details" not in r.json, r
    assert (await sheda.api.get(f"/api/v1/appointments/{appt['id']}", token=client.token)).json["cancel_reason"] == "agent_inactive"
    await sheda.ctx.db["appointments"].update_one({"_id": appt["id"]}, {"$set": {"status": "confirmed"}, "$unset": {"cancel_reason": ""}})
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    assert r.status == 409 and r.json["code"] == "agent_inactive", r
    assert "account_details" not in r.json
    assert await sheda.ctx.db["contracts"].count_documents({"property_id": prop["id"]}) == 0
    assert (await sheda.api.patch(f"/api/v1/admin/users/{agent.id}", {"is_active": True}, token=admin.token)).status == 200
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    assert r.status == 201 and r.json["account_details"]["account_number"], r


async def test_an_activation_cut_between_its_two_writes_is_finished_by_the_next_confirmation(sheda):
    """A server killed after taking the property for the contract (first write) and before moving the
    contract (second) leaves exactly this state; the agent's confirmation must finish it, not 409 for ever."""
    agent, prop, people = await rental_ready(sheda, clients=2)
    (client, appt), (other, other_appt) = people
    r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
    cid = r.json["id"]
    assert (await sheda.api.patch(f"{CT}/{cid}/payment-sent", token=client.token)).status == 200
    rival = (await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": other_appt["id"], "term_months": 12}, token=other.token)).json
    # The first write of an activation, as ContractService._activate makes it, and then the crash.
    await sheda.ctx.db["properties"].update_one({"_id": prop["id"], "status": "available"},
                                                {"$set": {"status": "rented", "contract_id": cid}})
    r = await sheda.api.patch(f"{CT}/{cid}/confirm-payment", token=agent.token)
    assert r.status == 200 and r.json["status"] == "active", r
    stored = await sheda.ctx.db["properties"].find_one({"_id": prop["id"]})
    assert stored["status"] == "rented" and stored["contract_id"] == cid
    assert (await sheda.ctx.db["contracts"].find_one({"_id": rival["id"]}))["status"] == "cancelled"
    # The rival cannot take a property held for another contract: the resumption is only for its holder.
    r = await sheda.api.patch(f"{CT}/{rival['id']}/payment-sent", token=other.token)
    assert r.status == 409


async def test_a_contract_cancelled_after_an_activation_cut_between_its_writes_hands_the_property_back(sheda):
    agent, prop, [(client, appt)] = await rental_ready(sheda)
    cid = (await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)).json["id"]
    await sheda.ctx.db["properties"].update_one({"_id": prop["id"], "status": "available"},
                                                {"$set": {"status": "rented", "contract_id": cid}})
    r = await sheda.api.patch(f"{CT}/{cid}/cancel", token=client.token)
    assert r.status == 200 and r.json["status"] == "cancelled", r
    stored = await sheda.ctx.db["properties"].find_one({"_id": prop["id"]})
    assert stored["status"] == "available" and "contract_id" not in stored


async def test_two_contracts_on_one_property_never_both_active(sheda):
    agent, prop, people = await rental_ready(sheda, clients=2)
    cids = []
    for client, appt in people:
        r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)
        assert r.status == 201
        cids.append(r.json["id"])
        assert (await sheda.api.patch(f"{CT}/{r.json['id']}/payment-sent", token=client.token)).status == 200
    results = await asyncio.gather(*(sheda.api.patch(f"{CT}/{cid}/confirm-payment", token=agent.token) for cid in cids))
    assert sorted(r.status for r in results) == [200, 409], results
    winner = next(r.json for r in results if r.status == 200)
    statuses = {c["_id"]: c["status"] async for c in sheda.ctx.db["contracts"].find({"_id": {"$in": cids}})}
    assert list(statuses.values()).count("active") == 1 and statuses[winner["id"]] == "active"
    loser = next(cid for cid in cids if cid != winner["id"])
    assert statuses[loser] == "cancelled"  # it could never complete: its client was told
    stored = await snapshot(sheda, "properties", prop["id"])
    assert stored["status"] == "rented" and stored["contract_id"] == winner["id"]


async def test_contract_started_while_a_rival_is_confirmed_is_closed_not_left_dangling(sheda):
    # Client 2 starts a contract exactly while the agent confirms client 1's payment: the
    # confirmation lands after client 2's availability check and before its insert.
    agent, prop, [(c1, a1), (c2, a2)] = await rental_ready(sheda, clients=2)
    cid1 = (await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": a1["id"], "term_months": 6}, token=c1.token)).json["id"]
    assert (await sheda.api.patch(f"{CT}/{cid1}/payment-sent", token=c1.token)).status == 200
    store = sheda.ctx.contracts.store
    real_insert = store.insert
    confirmed = []

    async def insert_after_a_rival_confirms(doc):
        confirmed.append(await sheda.api.patch(f"{CT}/{cid1}/confirm-payment", token=agent.token))
        return await real_insert(doc)

    store.insert = insert_after_a_rival_confirms
    try:
        r = await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": a2["id"], "term_months": 6}, token=c2.token)
    finally:
        store.insert = real_insert
    assert confirmed[0].status == 200
    assert r.status == 409 and r.json["code"] == "property_unavailable", r
    mine = await sheda.ctx.db["contracts"].find({"client_id": c2.id}).to_list()
    assert [(d["status"], d.get("cancel_reason"), "open_key" in d) for d in mine] == [("cancelled", "property_unavailable", False)]
    assert (await snapshot(sheda, "properties", prop["id"]))["contract_id"] == cid1


async def test_double_confirm_of_one_contract_and_cancel_racing_confirm(sheda):
    agent, prop, [(client, appt)] = await rental_ready(sheda)
    cid = (await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": 12}, token=client.token)).json["id"]
    await sheda.api.patch(f"{CT}/{cid}/payment-sent", token=client.token)
    results = await asyncio.gather(*(sheda.api.patch(f"{CT}/{cid}/confirm-payment", token=agent.token) for _ in range(3)))
    assert sorted(r.status for r in results) == [200, 409, 409]

    agent2, prop2, [(client2, appt2)] = await rental_ready(sheda)
    cid2 = (await sheda.api.post(f"{CT}/{prop2['id']}", {"appointment_id": appt2["id"], "term_months": 12}, token=client2.token)).json["id"]
    await sheda.api.patch(f"{CT}/{cid2}/payment-sent", token=client2.token)
    confirm, cancel = await asyncio.gather(sheda.api.patch(f"{CT}/{cid2}/confirm-payment", token=agent2.token),
                                           sheda.api.patch(f"{CT}/{cid2}/cancel", token=client2.token))
    assert sorted([confirm.status, cancel.status]) == [200, 409]
    doc = await snapshot(sheda, "contracts", cid2)
    prop_doc = await snapshot(sheda, "properties", prop2["id"])
    if confirm.status == 200:
        assert doc["status"] == "active" and prop_doc["status"] == "rented"
    else:
        assert doc["status"] == "cancelled" and prop_doc["status"] == "available" and "contract_id" not in prop_doc


async def test_expiry_with_moved_clock_and_two_jobs_at_once(sheda):
    made = []
    for months in (1, 2):
        agent, prop, [(client, appt)] = await rental_ready(sheda)
        ws = await sheda.ws(client.token)
        cid = (await sheda.api.post(f"{CT}/{prop['id']}", {"appointment_id": appt["id"], "term_months": months}, token=client.token)).json["id"]
        await sheda.api.patch(f"{CT}/{cid}/payment-sent", token=client.token)
        assert (await sheda.api.patch(f"{CT}/{cid}/confirm-payment", token=agent.token)).status == 200
        made.append((cid, prop["id"], ws))
    s_agent, sale, [(buyer, s_appt)] = await rental_ready(sheda, listing_type="sale")
    sale_cid = (await sheda.api.post(f"{CT}/{sale['id']}", {"appointment_id": s_appt["id"]}, token=buyer.token)).json["id"]
    await sheda.api.patch(f"{CT}/{sale_cid}/payment-sent", token=buyer.token)
    await sheda.api.patch(f"{CT}/{sale_cid}/confirm-payment", token=s_agent.token)
    job = sheda.ctx.contract_expiry
    from sheda_rt.metrics import CONTRACTS_EXPIRED

    # not yet due: nothing happens
    await job.run()
    for cid, _, _ in made:
        assert (await snapshot(sheda, "contracts", cid))["status"] == "active"

    # 40 days later only the one-month lease is due; two jobs at once expire it exactly once
    sheda.ctx.clock.advance(days=40)
    expired_before = CONTRACTS_EXPIRED._value.get()
    counts = await asyncio.gather(job.run(), job.run())
    first_cid, first_pid, first_ws = made[0]
    assert (await snapshot(sheda, "contracts", first_cid))["status"] == "expired"
    assert (await snapshot(sheda, "contracts", made[1][0]))["status"] == "active"
    assert (await snapshot(sheda, "properties", first_pid))["status"] == "available"
    assert CONTRACTS_EXPIRED._value.get() - expired_before == sum(counts)
    await first_ws.wait_type("contract.expired")
    await asyncio.sleep(0.2)  # let any duplicate arrive, to prove there is none
    assert len([f for f in first_ws.of_type("contract.expired") if f["contract"]["id"] == first_cid]) == 1
    assert len([f for f in first_ws.frames if f.get("kind") == "contract.expired"]) == 1
    assert await sheda.ctx.db["notifications"].count_documents({"kind": "contract.expired", "data.contract_id": first_cid}) == 2

    # 30 more days: the second; the sale never expires by itself
    sheda.ctx.clock.advance(days=30)
    await asyncio.gather(job.run(), job.run(), job.run())
    assert (await snapshot(sheda, "contracts", made[1][0]))["status"] == "expired"
    assert (await snapshot(sheda, "contracts", sale_cid))["status"] == "active"
    assert await job.run() == 0  # idempotent
    for _, _, ws in made:
        ws.close()
