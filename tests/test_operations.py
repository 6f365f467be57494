"""`python run.py` as an operator runs it: a fresh data directory, the embedded database
started and stopped with the server, data surviving a restart, a clean SIGTERM, and a
wrong setting refused with one line."""
from __future__ import annotations

import json
import signal

from tests.process_support import ServerProcess, free_port, pid_alive, run_cli


def test_fresh_start_restart_and_clean_sigterm(tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data)
    try:
        server.start()
        assert (data / "db").is_dir() and (data / "jwt_secret").exists()
        assert (data / "jwt_secret").stat().st_mode & 0o077 == 0, "the generated secret is private"
        db_pid = server.db_pid()
        assert db_pid and pid_alive(db_pid)
        status, body = server.get("/health/ready")
        assert status == 200 and body["checks"]["database"] == "ok"

        # A user registered over HTTP; its OTP went to the file outbox.
        status, user = server.request("POST", "/api/v1/auth/register", {
            "username": "persisted", "email": "persisted@example.com", "password": "persist-pass-1", "user_type": "agent"})
        assert status == 201, user
        mails = list((data / "outbox").glob("*.eml"))
        assert len(mails) == 1 and "persisted@example.com" in mails[0].read_text()

        assert server.stop(signal.SIGTERM) == 0
        assert not pid_alive(db_pid), "the child database stops with the server"
        assert not (data / "db.lock.json").exists()
        log = server.output()
        assert '"event": "stopped"' in log and "Traceback" not in log
        # One JSON line per request, with method, path, status, duration and request id.
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"method"' in line]
        assert any(r["path"] == "/api/v1/auth/register" and r["status"] == 201 and r["request_id"] and "duration_ms" in r for r in lines)

        # Restart on the same directory: same secret, same data.
        server = ServerProcess(data)
        server.start()
        status, user2 = server.get(f"/api/v1/users/{user['id']}")
        assert status == 200 and user2["username"] == "persisted"
        assert server.stop(signal.SIGINT) == 0
    finally:
        server.kill()


def test_every_log_line_is_one_json_object(tmp_path):
    # The README: one JSON line per event. Records not written as JSON by us (Tornado's "Malformed HTTP
    # message" at INFO for a client's garbage request, a library's warning, a traceback) were bare text
    # lines, tracebacks several lines: a log collector parsing JSON dropped or split them.
    import socket

    server = ServerProcess(tmp_path / "data")
    try:
        server.start()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GARBAGE\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        assert server.stop(signal.SIGTERM) == 0
        lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]  # output() is its tail
        records = [json.loads(line) for line in lines]  # every line parses
        assert all(isinstance(r, dict) for r in records)
        assert any(r.get("event") == "log" and "Malformed HTTP" in r["message"] and r["level"] == "INFO" for r in records), lines
    finally:
        server.kill()


def test_wrong_setting_fails_with_one_line(tmp_path):
    for env, needle in (({"PORT": "abc"}, "PORT"), ({"ACCESS_TOKEN_MINUTES": "0"}, "ACCESS_TOKEN_MINUTES"),
                        ({"BCRYPT_ROUNDS": "99"}, "BCRYPT_ROUNDS"), ({"JWT_SECRET": "too-short-secret"}, "JWT_SECRET"),
                        ({"JWT_ALGORITHM": "none"}, "JWT_ALGORITHM"), ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
                        ({"MONGODB_URI": "127.0.0.1:27017"}, "MONGODB_URI"),
                        ({"SMTP_PORT": "99999"}, "SMTP_PORT"),  # was taken, and every mail failed at send time
                        # blank HOST listened everywhere, blank DATA_DIR wrote into the working directory, and a database
                        # name MongoDB refuses stopped the server only after the database started, naming the driver's error
                        ({"HOST": " "}, "HOST"), ({"DATA_DIR": ""}, "DATA_DIR"), ({"MONGODB_DB": "a.b c"}, "MONGODB_DB")):
        code, out, err = run_cli(tmp_path / "data", env_extra=env, timeout=30)
        assert code == 2, (env, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("sheda:"), err
        assert "Traceback" not in err + out
        assert "too-short-secret" not in err  # a secret is never echoed into logs


def test_setting_refused_at_start_fails_with_one_line(tmp_path):
    # Settings only checked once the server builds its parts (a key that does not parse, a key file that
    # cannot be read, APNs half configured) stop it as a malformed value does: one line naming the setting,
    # status 2, no traceback, the key itself never echoed. They were tracebacks.
    secret = "not-a-vapid-key-value"
    for env, needle in (({"VAPID_PRIVATE_KEY": secret}, "VAPID_PRIVATE_KEY"),
                        ({"VAPID_PRIVATE_KEY": "garbage"}, "VAPID_PRIVATE_KEY"),  # decodes to 5 bytes: was taken as a key
                        ({"FCM_SERVICE_ACCOUNT_FILE": str(tmp_path / "missing.json")}, "FCM_SERVICE_ACCOUNT_FILE"),
                        ({"APNS_KEY_FILE": str(tmp_path / "missing.p8")}, "APNS_KEY_FILE")):
        code, out, err = run_cli(tmp_path / "data", env_extra={**env, "PORT": free_port()})
        assert code == 2 and "Traceback" not in err + out, (env, err)
        refusals = [line for line in err.splitlines() if line.startswith("sheda:")]
        assert len(refusals) == 1 and needle in refusals[0], err
        assert secret not in err + out


def test_setting_refused_by_workers_stops_without_restarts(tmp_path):
    # With --processes each worker builds its parts after the fork: a setting refused there was a traceback per
    # worker, restarted 16 times, then exit 1. Now the refusal line, no restart, status 2.
    from tests.redis_support import RedisServer

    redis = RedisServer().start()
    try:
        code, out, err = run_cli(tmp_path / "data", "--processes", "2", env_extra={
            "VAPID_PRIVATE_KEY": "garbage", "REDIS_URL": redis.url, "PORT": free_port()})
    finally:
        redis.stop()
    assert code == 2 and "Traceback" not in err + out, err
    refusals = {line for line in err.splitlines() if line.startswith("sheda:")}
    assert len(refusals) == 1 and "VAPID_PRIVATE_KEY" in refusals.pop(), err
    assert "workers_crashing" not in out + err and out.count('"event": "worker_started"') == 2, out


def test_port_in_use_fails_with_one_line(tmp_path):
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        code, out, err = run_cli(tmp_path / "data", env_extra={"PORT": port}, timeout=90)
    assert code == 2 and "Traceback" not in err + out
    assert err.strip().splitlines()[-1].startswith("sheda: cannot listen"), err


def test_unreachable_database_fails_with_one_line(tmp_path):
    port = free_port()  # nothing listens there
    code, out, err = run_cli(tmp_path / "data", env_extra={"MONGODB_URI": f"mongodb://127.0.0.1:{port}/", "PORT": free_port()})
    assert code == 2 and "Traceback" not in err + out, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sheda: database error at startup"), err
    assert not (tmp_path / "data" / "db").exists(), "with MONGODB_URI set, no embedded database is started"
