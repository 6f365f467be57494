async def test_health_and_register_login(sheda):
    r = await sheda.api.get("/health")
    assert r.status == 200 and r.json == {"status": "ok"}
    user = await sheda.signup("client")  # register → OTP mail → verify-account
    login = await sheda.api.post("/api/v1/auth/login", {"username": user.email, "password": user.password})
    assert login.status == 200
    me = await sheda.api.get("/api/v1/users/me", token=login.json["access_token"])
    assert me.status == 200 and me.json["username"] == user.username
