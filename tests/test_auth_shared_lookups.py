"""Token checks that arrive together share their database reads (one user query and one
revocation query per event-loop turn, sheda_rt/accounts/auth.py SharedLookups). Each
caller must still get its own answer: a burst of sockets and requests mixing valid,
logged-out and deactivated users' tokens is answered token by token."""
from __future__ import annotations

import asyncio


async def test_a_burst_of_mixed_tokens_is_answered_token_by_token(sheda):
    users = [await sheda.signup("client") for _ in range(6)]
    logged_out, deactivated = users[0], users[1]
    login = await sheda.api.post("/api/v1/auth/login", {"username": logged_out.username, "password": logged_out.password})
    still_valid = login.json["access_token"]  # another login of the logged-out user: unaffected
    assert (await sheda.api.post("/api/v1/auth/logout", token=logged_out.token)).status in (200, 204)
    assert (await sheda.ctx.users.update(deactivated.id, {"is_active": False})) is not None

    calls = []
    real = sheda.ctx.users.get_many

    async def counting(ids):  # the real query, counted
        calls.append(len(list(ids)))
        return await real(ids)

    sheda.ctx.users.get_many = counting
    try:
        tokens = [logged_out.token, deactivated.token, still_valid] + [u.token for u in users[2:]]
        sockets = await asyncio.gather(*(sheda.ws(t) for t in tokens * 3))
        mes = await asyncio.gather(*(sheda.api.get("/api/v1/users/me", token=t) for t in tokens * 3))
    finally:
        sheda.ctx.users.get_many = real
    assert calls and sum(calls) < len(tokens) * 6, calls  # lookups were shared (fewer users asked for than tokens checked)
    for i, ws in enumerate(sockets):
        kind = i % len(tokens)
        if kind == 0:
            assert (await ws.wait_closed())[0] == 4401
        elif kind == 1:
            assert (await ws.wait_closed())[0] == 4403
        else:
            await ws.send({"type": "ping"})
            await ws.wait_type("pong")
    expected = [401, 403] + [200] * (len(tokens) - 2)
    assert [r.status for r in mes] == expected * 3
    me = {r.json["id"] for r in mes if r.status == 200}
    assert me == {logged_out.id} | {u.id for u in users[2:]}
