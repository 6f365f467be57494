"""The administrators' real-time API and presence on request across processes: two real
`python run.py` servers sharing one Redis and one database (tests/redis_support.py).
An announcement or a disconnect asked of A reaches sockets held by B; presence asked of
A sees a user whose only socket is on B."""
from __future__ import annotations


from tests.process_support import run_cli
from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (module fixtures)
from tests.support import eventually


async def admin_on(remote: Remote):
    """A user promoted by the operator's command, logged in again for the admin scope."""
    user = await remote.signup("client")
    code, out, err = run_cli(remote.server.data_dir, "promote-admin", user.username, env_extra=remote.server.env)
    assert code == 0 and "is now an admin" in out, (code, out, err)
    login = await remote.api.post("/api/v1/auth/login", {"username": user.username, "password": user.password})
    assert login.status == 200, login
    user.access_token = login.json["access_token"]
    return user


async def test_broadcast_asked_of_a_reaches_sockets_on_b_filtered_by_user_type(server_pair):
    a, b = Remote(server_pair[0]), Remote(server_pair[1])
    admin = await admin_on(a)
    client, agent = await b.signup("client"), await b.signup("agent")
    client_b, agent_b = await b.ws(client.token), await b.ws(agent.token)
    agent_a = await a.ws(agent.token)

    resp = await a.api.post("/api/v1/admin/broadcast", {"message": "Agents only", "user_type": "agent"}, token=admin.token)
    assert resp.status == 202, resp
    assert resp.json["delivered_sockets"] >= 1  # the agent's socket on A; B's are not counted here
    for ws in (agent_b, agent_a):
        frame = await ws.wait_type("announcement", timeout=10)
        assert frame["message"] == "Agents only" and frame["user_type"] == "agent"
    resp = await a.api.post("/api/v1/admin/broadcast", {"message": "Everyone"}, token=admin.token)
    assert resp.status == 202, resp
    first = await client_b.wait_type("announcement", timeout=10)
    assert first["message"] == "Everyone"  # the agents-only one never reached the client on B
    # The stored copies, read through B.
    notes = await b.api.get("/api/v1/notifications", token=agent.token)
    assert {n["body"] for n in notes.json["items"] if n["kind"] == "announcement"} == {"Agents only", "Everyone"}


async def test_disconnect_asked_of_a_closes_the_users_sockets_on_b_only(server_pair):
    a, b = Remote(server_pair[0]), Remote(server_pair[1])
    admin = await admin_on(a)
    bob, carol = await b.signup("client"), await b.signup("client")
    bob_b, bob_a, carol_b = await b.ws(bob.token), await a.ws(bob.token), await b.ws(carol.token)

    resp = await a.api.post(f"/api/v1/admin/users/{bob.id}/disconnect", token=admin.token)
    assert resp.status == 202 and resp.json == {"user_id": bob.id, "close_code": 4000}, resp
    for ws in (bob_b, bob_a):
        assert await ws.wait_closed(timeout=10) == (4000, "disconnected by an administrator")
    await carol_b.send({"type": "ping"})
    await carol_b.wait_type("pong")
    assert not carol_b.closed.done()


async def test_presence_asked_of_a_sees_a_user_connected_only_on_b(server_pair):
    a, b = Remote(server_pair[0]), Remote(server_pair[1])
    alice, bob = await a.signup("client"), await b.signup("agent")
    sent = await a.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "hi"}, token=alice.token)
    assert sent.status == 201, sent

    async def bob_seen_by_alice(online: bool, seen: bool = False):
        resp = await a.api.get("/api/v1/presence", params={"user_ids": str(bob.id)}, token=alice.token)
        assert resp.status == 200, resp
        items = resp.json["items"]
        assert [i["user_id"] for i in items] == [bob.id]
        return items[0] if items[0]["online"] is online and (items[0]["last_seen"] is not None or not seen) else None

    assert (await bob_seen_by_alice(False))["last_seen"] is None
    bob_b = await b.ws(bob.token)
    await eventually(lambda: bob_seen_by_alice(True))
    bob_b.close()
    await eventually(lambda: bob_seen_by_alice(False, seen=True))  # offline, and when he left is stored
