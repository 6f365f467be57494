"""Mute, archive and search across processes (issue 15 §3): two `python run.py` instances sharing
one redis-server and one database. What one process stores, the other lists, filters and finds;
a settings change made through one reaches my socket on the other."""
from __future__ import annotations

from tests.redis_support import Remote, redis_server, server_pair, shared_dir  # noqa: F401  (module fixtures)


async def test_settings_and_search_work_across_processes(server_pair):
    a, b = (Remote(s) for s in server_pair)
    alice, bob = await a.signup("client"), await b.signup("agent")
    bob_on_a = await a.ws(bob.token)

    r = await a.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "Is the CAFÉ near the flat?"}, token=alice.token)
    assert r.status == 201, r
    first = r.json["id"]
    # Bob archives and mutes through B; his socket on A hears of it, A's list shows it.
    r = await b.api.patch(f"/api/v1/chat/conversations/{alice.id}/settings", {"archived": True, "muted_until": "forever"},
                          token=bob.token)
    assert r.status == 200, r
    event = await bob_on_a.wait_type("conversation.settings", 10, seq=r.json["seq"])
    assert event["archived"] is True and event["muted_until"] == "forever"
    listed = (await a.api.get("/api/v1/chat/conversations", token=bob.token, params={"archived": "true"})).json["items"]
    assert [(row["user_id"], row["archived"], row["muted_until"]) for row in listed] == [(alice.id, True, "forever")]
    assert (await a.api.get("/api/v1/chat/conversations", token=bob.token)).json["items"] == []

    # A message stored through B brings it back on A; search on either finds what the other stored.
    r = await b.api.post("/api/v1/chats", {"receiver_id": bob.id, "message": "The cafe closes at nine"}, token=alice.token)
    assert r.status == 201, r
    second = r.json["id"]
    [row] = (await a.api.get("/api/v1/chat/conversations", token=bob.token)).json["items"]
    assert row["archived"] is False and row["muted_until"] == "forever"
    for remote in (a, b):
        r = await remote.api.get("/api/v1/chat/search", token=bob.token, params={"q": "cafe"})
        assert [item["id"] for item in r.json["items"]] == [second, first], r
    bob_on_a.close()
