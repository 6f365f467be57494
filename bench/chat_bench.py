#!/usr/bin/env python
"""Chat benchmark: real server process(es), the embedded database, N authenticated
WebSocket clients in pairs, and a raw Tornado echo server measured with the same
client in the same run.

    python bench/chat_bench.py                       # defaults: 200 clients, 10k idle sockets
    python bench/chat_bench.py --clients 1000 --seconds 10 --rate 1000 --idle 10000
    python bench/chat_bench.py --processes 2 --redis-url redis://127.0.0.1:6379/0
    python bench/chat_bench.py --compare             # 1 process, then 2 processes + Redis, same load

What it prints (one line each, then a JSON summary line):
- idle: sockets held, authenticated connects/s while opening them, server RSS per idle
  authenticated socket (VmRSS before/after)
- echo: raw Tornado echo round trips/s (same client, same window)
- chat: messages stored and delivered/s (closed loop, `--window` in flight per sender),
  p50/p99 send->deliver latency, and the ratio to the echo rate
- rate: delivered/s and p50/p99 send->deliver latency at each `--rate` offered (open loop;
  default 1,000 and 2,000 msgs/s), and messages still not delivered 5 s after (lost/late).
  With `--window 1` (the default) these are the figures ../shared/perf/compare.sh prints.
- with --compare: the chat and rate phases against 1 process and against 2 processes
  sharing one port with Redis between them (a redis-server is started on a free port
  unless --redis-url is given), then both side by side. Sockets land on either worker
  as the kernel spreads them, so most pairs talk across processes through Redis.

Users are inserted straight into the database (bcrypt for 10,000 sign-ups would
take an hour) and get tokens signed with the server's JWT secret; every socket
still authenticates over the WebSocket like a real client. The rate limit is
raised for the load phases (the default 5 messages/s per user would measure the
limiter, not the server).

The client is raw asyncio (no WebSocket library): unmasked reads, writes with an
all-zero mask (valid per RFC 6455 for non-browser clients), so client CPU stays
small next to the server's on this 2-core machine.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a light WebSocket client ----------------------------------------------------------
class WsClient(asyncio.Protocol):
    """One socket. `on_text(client, text)` is called for each text frame."""

    __slots__ = ("transport", "buf", "opened", "closed", "on_text", "handshaken", "index", "close_code")

    def __init__(self, index: int, on_text):
        self.index = index
        self.on_text = on_text
        self.buf = bytearray()
        self.handshaken = False
        loop = asyncio.get_running_loop()
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.transport = None
        self.close_code = None

    def handshake(self, host: str, path: str) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"socket {self.index} lost before upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def data_received(self, data: bytes):
        buf = self.buf
        buf += data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:12])
            del buf[: end + 4]
            if not status.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(f"upgrade refused: {status!r}"))
                self.transport.close()
                return
            self.handshaken = True
            self.opened.set_result(True)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if n - pos < head + length:
                break
            payload = bytes(buf[pos + head: pos + head + length])
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 0x1:
                self.on_text(self, payload)
            elif opcode == 0x9:  # ping -> pong
                self.send_frame(0xA, payload)
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.transport.close()
        if pos:
            del buf[:pos]

    def send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
        self.transport.write(head + b"\x00\x00\x00\x00" + payload)  # all-zero mask: payload unchanged

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())


async def open_sockets(host: str, port: int, paths: list[str], on_text, concurrency: int = 200) -> list[WsClient]:
    loop = asyncio.get_running_loop()
    clients: list[WsClient | None] = [None] * len(paths)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int):
        async with sem:
            for attempt in range(5):
                proto = WsClient(i, on_text)
                try:
                    await loop.create_connection(lambda: proto, host, port)
                    proto.transport.write(proto.handshake(f"{host}:{port}", paths[i]))
                    await asyncio.wait_for(proto.opened, 60)
                    clients[i] = proto
                    return
                except (OSError, ConnectionError, asyncio.TimeoutError):
                    if proto.transport:
                        proto.transport.close()
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise RuntimeError(f"socket {i} could not connect")

    await asyncio.gather(*(one(i) for i in range(len(paths))))
    return clients


async def close_sockets(clients) -> None:
    for c in clients:
        if c and c.transport and not c.transport.is_closing():
            c.send_frame(0x8, struct.pack("!H", 1000))
    await asyncio.sleep(0.5)
    for c in clients:
        if c and c.transport:
            c.transport.close()


# ---- processes ---------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def server_pids(root: int) -> list[int]:
    """The Sheda server process(es): run.py itself, or its workers; never the database."""
    pids = []
    for child in children(root):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"secantus" not in cmd:
            pids.append(child)
    return pids or [root]


def wait_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


class ServerProcess:
    def __init__(self, data_dir: Path, port: int, secret: str, processes: int, redis_url: str | None, extra_env: dict,
                 profile: str | None = None):
        env = dict(os.environ, DATA_DIR=str(data_dir), PORT=str(port), HOST="127.0.0.1", JWT_SECRET=secret,
                   LOG_LEVEL="WARNING", PROCESSES=str(processes), **extra_env)
        if redis_url:
            env["REDIS_URL"] = redis_url
        self.log = open(data_dir / "server.log", "ab")
        cmd = [sys.executable] + (["-m", "cProfile", "-o", profile] if profile else []) + [str(ROOT / "run.py")]
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.port = port
        self.data_dir = data_dir

    def ready(self) -> None:
        wait_http(f"http://127.0.0.1:{self.port}/health")

    def db_uri(self) -> str:
        info = json.loads((self.data_dir / "db.lock.json").read_text())
        return f"mongodb://127.0.0.1:{info['port']}/?directConnection=true"

    def rss(self) -> int:
        return sum(rss_kib(p) for p in server_pids(self.proc.pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


ECHO_SERVER = """
import asyncio, resource, sys
import tornado.web, tornado.websocket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message)
async def main():
    tornado.web.Application([(r"/echo", Echo)], websocket_ping_interval=25).listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()
asyncio.run(main())
"""


def create_users(uri: str, db_name: str, secret: str, count: int) -> list[tuple[int, str]]:
    """Insert `count` verified users in one batch and sign an access token for each."""
    from pymongo import MongoClient, ReturnDocument

    from sheda_rt.accounts.tokens import TokenCodec
    from sheda_rt.clock import Clock

    client = MongoClient(uri)
    db = client[db_name]
    end = db["counters"].find_one_and_update({"_id": "users"}, {"$inc": {"seq": count}}, upsert=True,
                                             return_document=ReturnDocument.AFTER)["seq"]
    ids = range(end - count + 1, end + 1)
    now = datetime.now(timezone.utc)
    tag = secrets.token_hex(3)
    docs = [{"_id": i, "username": f"bench{tag}_{i}", "username_lc": f"bench{tag}_{i}", "email": f"bench{tag}_{i}@bench.local",
             "password_hash": "!", "user_type": "client" if i % 2 else "agent", "role": "user", "is_active": True,
             "is_verified": True, "created_at": now, "updated_at": now} for i in ids]
    for start in range(0, count, 1000):
        db["users"].insert_many(docs[start:start + 1000], ordered=False)
    client.close()
    codec = TokenCodec(secret, "HS256", Clock())
    return [(i, codec.issue(i, [docs[k]["user_type"]], "access", timedelta(days=1))[0]) for k, i in enumerate(ids)]


# ---- measurements --------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Traffic:
    """Pairs (2k, 2k+1) message each other. In closed-loop mode each sender keeps
    `window` messages in flight; a message's delivery to its receiver releases the
    next one. Latency = deliver time - send time (both clocks of this process)."""

    def __init__(self, users, window: int, echo: bool):
        self.users = users
        self.window = window
        self.echo = echo
        self.clients: list[WsClient] = []
        self.delivered = 0
        self.latencies: list[float] = []
        self.record = False
        self.closed_loop = True
        self.seq = 0
        self.errors = 0

    def peer(self, i: int) -> int:
        return i ^ 1

    def frame(self, sender: int) -> str:
        self.seq += 1
        body = f"{time.perf_counter_ns()} hello from the benchmark"
        if self.echo:
            return json.dumps({"type": "message", "receiver_id": sender, "message": body})
        return json.dumps({"receiver_id": self.users[self.peer(sender)][0], "message": body,
                           "client_msg_id": f"b{self.seq}"})

    def send(self, sender: int) -> None:
        c = self.clients[sender]
        if c.transport is not None and not c.transport.is_closing():
            c.send_text(self.frame(sender))

    def on_text(self, client: WsClient, payload: bytes) -> None:
        if payload.startswith(b'{"type":"ack"') or payload.startswith(b'{"type":"presence"'):
            return
        frame = json.loads(payload)
        kind = frame.get("type")
        if kind == "message":
            now = time.perf_counter_ns()
            sent = int(frame["message"].split(" ", 1)[0])
            self.delivered += 1
            if self.record:
                self.latencies.append((now - sent) / 1e6)
            if self.closed_loop:
                # The sender of this message may send its next one.
                self.send(client.index if self.echo else self.peer(client.index))
        elif kind == "error":
            self.errors += 1
            if self.errors <= 3:
                print("  error frame:", frame, flush=True)


async def closed_loop(traffic: Traffic, seconds: float, warmup: float = 1.0) -> tuple[float, float, float]:
    traffic.closed_loop = True
    for i in range(len(traffic.clients)):
        for _ in range(traffic.window):
            traffic.send(i)
    await asyncio.sleep(warmup)
    traffic.record, traffic.latencies = True, []
    start_count, t0 = traffic.delivered, time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (traffic.delivered - start_count) / (time.perf_counter() - t0)
    traffic.record, traffic.closed_loop = False, False
    await asyncio.sleep(1.0)  # let in-flight messages land
    return rate, pct(traffic.latencies, 50), pct(traffic.latencies, 99)


async def open_loop(traffic: Traffic, rate: float, seconds: float, drain: float = 5.0) -> tuple[float, float, float, int, int]:
    """Offer `rate` messages/s spread over all senders, on a 2 ms tick. Returns delivered/s
    inside the window, send->deliver p50/p99 over every message sent in it (those delivered
    during a drain of up to `drain` seconds included), messages sent, and those still not
    delivered after the drain (lost or late), as ../shared/perf measures them."""
    traffic.closed_loop = False
    traffic.record, traffic.latencies = True, []
    start_count = traffic.delivered
    n = len(traffic.clients)
    t0 = time.perf_counter()
    sent, nxt = 0, 0
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
        due = int(elapsed * rate)
        while sent < due:
            traffic.send(nxt)
            nxt = (nxt + 1) % n
            sent += 1
        await asyncio.sleep(0.002)
    in_window = traffic.delivered - start_count
    end = time.perf_counter() + drain
    while traffic.delivered - start_count < sent and time.perf_counter() < end:
        await asyncio.sleep(0.05)
    traffic.record = False
    late = max(0, sent - (traffic.delivered - start_count))
    return in_window / seconds, pct(traffic.latencies, 50), pct(traffic.latencies, 99), sent, late


async def run(args) -> dict:
    nofile = raise_nofile()
    results: dict = {"clients": args.clients, "window": args.window, "processes": args.processes, "nofile": nofile}
    work = Path(tempfile.mkdtemp(prefix="sheda-bench-"))
    secret = secrets.token_urlsafe(48)
    port = free_port()
    env = {"WS_RATE_BURST": "1000000", "WS_RATE_PER_SECOND": "1000000", "CHAT_BATCH_WINDOW_MS": str(args.batch_window_ms),
           "MONGODB_DB": "sheda_bench"}
    server = ServerProcess(work, port, secret, args.processes, args.redis_url, env, args.profile)
    echo_proc = None
    try:
        server.ready()
        total_users = max(args.clients, args.idle)
        t = time.perf_counter()
        users = create_users(server.db_uri(), "sheda_bench", secret, total_users)
        print(f"setup: {total_users} users inserted and tokens signed in {time.perf_counter() - t:.1f}s", flush=True)
        path = "/api/v1/chat/ws?token={}"

        # -- idle sockets: RSS per authenticated connection --------------------------------
        if args.idle:
            await asyncio.sleep(1.0)
            warm = await open_sockets("127.0.0.1", port, [path.format(tok) for _, tok in users[:50]], lambda c, p: None)
            await close_sockets(warm)
            await asyncio.sleep(2.0)
            before = server.rss()
            t = time.perf_counter()
            idle = await open_sockets("127.0.0.1", port, [path.format(tok) for _, tok in users[: args.idle]], lambda c, p: None)
            opened_in = time.perf_counter() - t
            await asyncio.sleep(3.0)
            after = server.rss()
            held = sum(1 for c in idle if c.transport and not c.transport.is_closing())
            per = (after - before) / max(1, held)
            results.update(idle_sockets=held, idle_rss_before_kib=before, idle_rss_after_kib=after, idle_kib_per_socket=round(per, 2),
                           idle_open_seconds=round(opened_in, 1), connects_per_s=round(held / opened_in))
            print(f"idle: {held} authenticated sockets held (opened in {opened_in:.1f}s = {held / opened_in:,.0f} connects/s); "
                  f"server RSS {before/1024:.1f} -> {after/1024:.1f} MiB = {per:.1f} KiB per idle socket", flush=True)
            await close_sockets(idle)
            settle = time.perf_counter()
            await asyncio.to_thread(wait_sockets_gone, port)
            # The server then stores last_seen for every one of them (coalesced update_many):
            # wait for the database to have it all, so the load phases start on a quiet server.
            await asyncio.to_thread(wait_last_seen, server.db_uri(), "sheda_bench", [u for u, _ in users[: args.idle]])
            print(f"idle: all closed and recorded offline (last_seen stored) in {time.perf_counter() - settle:.1f}s", flush=True)
            await asyncio.sleep(1.0)

        pairs = users[: args.clients - args.clients % 2]

        # -- raw Tornado echo, same client ---------------------------------------------------
        echo_port = free_port()
        echo_proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(echo_port)], start_new_session=True)
        wait_port(echo_port)
        echo = Traffic(pairs, args.window, echo=True)
        echo.clients = await open_sockets("127.0.0.1", echo_port, ["/echo"] * len(pairs), echo.on_text)
        echo_rate, e50, e99 = await closed_loop(echo, args.seconds)
        await close_sockets(echo.clients)
        echo_proc.terminate()
        echo_proc.wait()
        echo_proc = None
        results.update(echo_msgs_per_s=round(echo_rate), echo_p50_ms=round(e50, 2), echo_p99_ms=round(e99, 2))
        print(f"echo: raw Tornado echo {echo_rate:,.0f} msgs/s with {len(pairs)} sockets, window {args.window} "
              f"(p50 {e50:.2f} ms, p99 {e99:.2f} ms)", flush=True)

        # -- chat: stored and delivered --------------------------------------------------------
        chat = Traffic(pairs, args.window, echo=False)
        chat.clients = await open_sockets("127.0.0.1", port, [path.format(tok) for _, tok in pairs], chat.on_text)
        await asyncio.sleep(1.0)
        chat_rate, c50, c99 = await closed_loop(chat, args.seconds)
        ratio = chat_rate / echo_rate if echo_rate else float("nan")
        results.update(chat_msgs_per_s=round(chat_rate), chat_p50_ms=round(c50, 2), chat_p99_ms=round(c99, 2),
                       chat_to_echo_ratio=round(ratio, 3))
        print(f"chat: {chat_rate:,.0f} msgs/s stored and delivered with {len(pairs)} sockets, window {args.window} "
              f"(p50 {c50:.2f} ms, p99 {c99:.2f} ms) = {ratio:.0%} of raw echo", flush=True)

        # -- chat at a fixed offered rate: latency ------------------------------------------------
        for k, rate in enumerate(float(r) for r in str(args.rate).split(",") if float(r) > 0):
            got, r50, r99, sent, late = await open_loop(chat, rate, args.seconds)
            tag = "" if k == 0 else f"_{rate:.0f}"  # the first rate keeps the old keys
            results.update({f"rate_offered{tag}": rate, f"rate_delivered_per_s{tag}": round(got), f"rate_p50_ms{tag}": round(r50, 2),
                            f"rate_p99_ms{tag}": round(r99, 2), f"rate_lost_or_late{tag}": late})
            print(f"rate: {rate:,.0f} msgs/s offered, {got:,.0f} delivered/s; send->deliver p50 {r50:.2f} ms, p99 {r99:.2f} ms; "
                  f"lost/late {late}", flush=True)
            await asyncio.sleep(1.0)
        results["errors"] = chat.errors
        await close_sockets(chat.clients)
    finally:
        if echo_proc is not None:
            echo_proc.terminate()
            echo_proc.wait()
        server.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return results


def wait_last_seen(uri: str, db_name: str, user_ids: list[int], timeout: float = 600.0) -> None:
    from pymongo import MongoClient

    client = MongoClient(uri)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # (no $in over 10,000 ids: the embedded database matches $in by scanning the list)
            done = client[db_name]["users"].count_documents({"_id": {"$gte": min(user_ids), "$lte": max(user_ids)},
                                                             "last_seen": {"$exists": True}})
            if done >= len(user_ids):
                return
            time.sleep(0.5)
    finally:
        client.close()


def wait_sockets_gone(port: int, timeout: float = 300.0) -> None:
    """Until the server's open-sockets gauge reads 0 (its offline bookkeeping is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            if any(line.split()[-1] in ("0", "0.0") for line in text.splitlines() if line.startswith("sheda_ws_open_sockets")):
                return
        except OSError:
            pass
        time.sleep(0.5)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


class RedisProcess:
    """A throwaway redis-server on a free port (no persistence)."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def compare(args) -> dict:
    """Same offered load against 1 process and 2 processes with Redis."""
    redis = None if args.redis_url else RedisProcess()
    url = args.redis_url or redis.url
    out = {}
    try:
        for processes in (1, 2):
            print(f"--- {processes} process{'es' if processes > 1 else ''}{' + Redis' if processes > 1 else ''}", flush=True)
            run_args = argparse.Namespace(**{**vars(args), "processes": processes, "idle": 0,
                                             "redis_url": url if processes > 1 else None})
            out[processes] = asyncio.run(run(run_args))
    finally:
        if redis:
            redis.stop()
    print("--- side by side (same client, same offered load)")
    for n, r in out.items():
        print(f"{n} process{'es' if n > 1 else '  '}: closed loop {r['chat_msgs_per_s']:,} delivered msgs/s (p99 {r['chat_p99_ms']} ms); "
              f"at {r.get('rate_offered', 0):,.0f} msgs/s offered: {r.get('rate_delivered_per_s', 0):,} delivered/s, p99 {r.get('rate_p99_ms')} ms "
              f"(raw echo {r['echo_msgs_per_s']:,}/s)", flush=True)
    return {"compare": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="sockets exchanging messages (pairs)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    parser.add_argument("--window", type=int, default=1, help="messages in flight per sender (closed loop; 1 as ../shared/perf)")
    parser.add_argument("--rate", default="1000,2000", help="offered messages/s for the open-loop phases, comma-separated (0: skip)")
    parser.add_argument("--idle", type=int, default=10000, help="idle authenticated sockets for the RSS phase (0: skip)")
    parser.add_argument("--processes", type=int, default=1, help="server worker processes (N > 1 needs --redis-url)")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--compare", action="store_true", help="run against 1 process, then 2 processes with Redis")
    parser.add_argument("--batch-window-ms", type=float, default=0.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory (server.log)")
    parser.add_argument("--profile", help="run the (single) server under cProfile, writing stats to this path")
    args = parser.parse_args()
    if args.processes > 1 and not args.redis_url:
        parser.error("--processes > 1 needs --redis-url")
    results = compare(args) if args.compare else asyncio.run(run(args))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
