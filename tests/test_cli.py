"""The run.py commands: promote-admin and create-user, with and without a running server."""
from __future__ import annotations

from tests.process_support import ServerProcess, pid_alive, run_cli


def test_help(tmp_path):
    code, out, err = run_cli(tmp_path / "data", "--help", timeout=30)
    assert code == 0 and "promote-admin" in out and "create-user" in out
    code, out, err = run_cli(tmp_path / "data", "create-user", "--help", timeout=30)
    assert code == 0 and "--user-type" in out
    code, out, err = run_cli(tmp_path / "data", "no-such-command", timeout=30)
    assert code == 2 and "invalid choice" in err


def test_commands_without_a_running_server(tmp_path):
    data = tmp_path / "data"
    code, out, err = run_cli(data, "create-user", "--username", "offline", "--email", "offline@example.com",
                             "--password", "offline-pass-1", "--user-type", "agent")
    assert code == 0, err
    assert out.strip().startswith("created user") and "offline" in out
    # The command started the database for itself and stopped it again.
    assert not (data / "db.lock.json").exists()
    code, out, err = run_cli(data, "promote-admin", "OFFLINE@example.com")
    assert code == 0 and "is now an admin" in out, err
    code, out, err = run_cli(data, "promote-admin", "nobody-here")
    assert code == 1 and err.strip() == "sheda: no user with email or username 'nobody-here'"
    code, out, err = run_cli(data, "create-user", "--username", "offline2", "--email", "offline@example.com", "--password", "offline-pass-1")
    assert code == 1 and "email" in err and "Traceback" not in err
    code, out, err = run_cli(data, "create-user", "--username", "x y", "--email", "bad", "--password", "short")
    assert code == 2 and err.startswith("sheda:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # The password can come from stdin (prompted when omitted).
    code, out, err = run_cli(data, "create-user", "--username", "piped", "--email", "piped@example.com", stdin="piped-pass-1\n")
    assert code == 0, err

    # The server then sees all of it: the promoted agent logs in with admin scope.
    server = ServerProcess(data)
    try:
        server.start()
        status, tokens = server.request("POST", "/api/v1/auth/login", {"username": "offline", "password": "offline-pass-1"})
        assert status == 200, tokens
        status, page = server.request("GET", "/api/v1/admin/users?q=offline", token=tokens["access_token"])
        assert status == 200 and [u["username"] for u in page["items"]] == ["offline"]
        assert page["items"][0]["role"] == "admin" and page["items"][0]["is_verified"] is True
        status, _ = server.request("POST", "/api/v1/auth/login", {"username": "piped", "password": "piped-pass-1"})
        assert status == 200
    finally:
        server.stop()
        server.kill()


def test_commands_with_the_server_running(tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data)
    try:
        server.start()
        db_pid = server.db_pid()
        status, _ = server.request("POST", "/api/v1/auth/register", {
            "username": "online", "email": "online@example.com", "password": "online-pass-1", "user_type": "client"})
        assert status == 201
        code, out, err = run_cli(data, "promote-admin", "online")
        assert code == 0 and "is now an admin" in out, err
        code, out, err = run_cli(data, "create-user", "--username", "second", "--email", "second@example.com",
                                 "--password", "second-pass-1", "--admin")
        assert code == 0 and "admin" in out, err
        # Same database process throughout: the commands connected to it, they did not start another.
        assert server.db_pid() == db_pid and pid_alive(db_pid)
        status, tokens = server.request("POST", "/api/v1/auth/login", {"username": "second", "password": "second-pass-1"})
        assert status == 200
        status, page = server.request("GET", "/api/v1/admin/users?role=admin", token=tokens["access_token"])
        assert status == 200 and {u["username"] for u in page["items"]} == {"online", "second"}
    finally:
        server.stop()
        server.kill()
