#!/usr/bin/env python
"""The embedded database's own latency floor for chat writes: no server, no sockets.

    python bench/db_floor_bench.py                   # 1,000 msgs/s for 15 s, 3 rounds
    python bench/db_floor_bench.py --rate 2000 --seconds 10 --rounds 2

It starts the embedded database on a scratch directory (as `python run.py` does), connects
with the server's own client settings (acknowledged = journaled) and creates the messages
collection with the server's index. Then messages arrive at random (Poisson) times at
`--rate` and are stored the cheapest way the server could store them: a group commit
(`MessageStore.insert_batch`, one `insert_many` per batch) that sends everything queued
as soon as an insert slot is free. Two variants, interleaved in each round:
- depth 1: one insert in flight; what arrives meanwhile goes in the next batch;
- depth 2: up to two in flight (the server's FREE_INSERTS).

Printed per run: p50 / p99 / max from a message's arrival to its insert being journaled,
batches and mean batch size, and the database process's CPU (cores). Nothing else runs
in this process, so this is the best any server on this database can do for the write
alone: the chat's send->deliver also reads the frame, acknowledges and delivers. Compare
its p99 with ../shared/perf/compare.sh's figures (Sheda RT's send->deliver p99, and the
FastAPI + PostgreSQL peer's, whose whole path is measured there) on the same machine.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sheda_rt.chat.store import MessageStore, conv_key  # noqa: E402
from sheda_rt.database.connection import connect  # noqa: E402
from sheda_rt.database.embedded import EmbeddedDatabase  # noqa: E402
from sheda_rt.launcher import use_fast_event_loop  # noqa: E402

PAIRS = 100  # the referee's 200 sockets in 100 pairs


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def run_once(store: MessageStore, db_pid: int, rate: float, seconds: float, depth: int, first_id: int) -> dict:
    """One run: Poisson arrivals at `rate` for `seconds`, group commit with `depth` inserts in flight."""
    queue: list[tuple[dict, float]] = []
    latencies: list[float] = []
    batches: list[int] = []
    writing = 0
    wake = asyncio.Event()
    next_id = first_id
    errors: list[str] = []

    async def write(batch: list[tuple[dict, float]]) -> None:
        nonlocal writing
        try:
            outcome = await store.insert_batch([doc for doc, _ in batch])
            if outcome.failed:
                errors.append(f"the database refused {len(outcome.failed)} documents: {next(iter(outcome.failed.values()))}")
            done = time.perf_counter()
            latencies.extend(done - arrived for i, (_, arrived) in enumerate(batch) if i not in outcome.failed)
        except Exception as exc:  # reported after the run: a figure with writes missing is no figure
            errors.append(f"insert failed: {exc!r}")
        finally:
            writing -= 1
            wake.set()

    async def committer() -> None:
        nonlocal writing
        while True:
            while not queue or writing >= depth:
                wake.clear()
                await wake.wait()
            batch = queue[:500]
            del queue[:500]
            batches.append(len(batch))
            writing += 1
            asyncio.ensure_future(write(batch))

    task = asyncio.ensure_future(committer())
    cpu0, started = cpu_seconds(db_pid), time.perf_counter()
    due = started
    while due < started + seconds:
        due += random.expovariate(rate)
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pair = random.randrange(PAIRS)
        sender, receiver = (2 * pair + 1, 2 * pair + 2) if random.random() < 0.5 else (2 * pair + 2, 2 * pair + 1)
        queue.append(({"_id": next_id, "sender_id": sender, "receiver_id": receiver, "conv": conv_key(sender, receiver),
                       "message": f"floor bench message {next_id}", "client_msg_id": f"fb-{next_id}",
                       "created_at": datetime.now(timezone.utc)}, time.perf_counter()))
        next_id += 1
        wake.set()
    while queue or writing:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    db_cores = (cpu_seconds(db_pid) - cpu0) / elapsed
    task.cancel()
    if errors:
        raise SystemExit(f"depth {depth}: {len(errors)} inserts failed, first: {errors[0]}")
    ms = [x * 1000 for x in latencies]
    return {"depth": depth, "messages": len(ms), "next_id": next_id, "p50": pct(ms, 0.5), "p99": pct(ms, 0.99),
            "max": max(ms), "batches_per_s": len(batches) / seconds, "mean_batch": len(ms) / len(batches),
            "db_cores": db_cores}


async def main_async(args) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="sheda-floor-"))
    embedded = EmbeddedDatabase(data_dir=scratch)
    uri = embedded.start()
    client, db = connect(uri, "floor_bench")
    try:
        store = MessageStore(db, ids=None)
        await store.ensure_indexes()
        next_id = 1
        # warm-up: the connection pool, the collection's first pages
        warm = await run_once(store, embedded.process.pid, args.rate, 2.0, 2, next_id)
        next_id = warm["next_id"]
        rows = []
        for rnd in range(args.rounds):
            for depth in (1, 2):
                row = await run_once(store, embedded.process.pid, args.rate, args.seconds, depth, next_id)
                next_id = row["next_id"]
                row["load"] = os.getloadavg()[0]
                rows.append(row)
                print(f"round {rnd + 1} depth {depth}: {row['messages']:,} messages, arrival->journaled "
                      f"p50/p99/max {row['p50']:.2f}/{row['p99']:.2f}/{row['max']:.1f} ms, "
                      f"{row['batches_per_s']:.0f} batches/s (mean {row['mean_batch']:.2f}), "
                      f"db {row['db_cores']:.2f} cores, load {row['load']:.2f}", flush=True)
        for depth in (1, 2):
            mine = [r for r in rows if r["depth"] == depth]
            print(f"depth {depth}, median of {len(mine)}: p50 {statistics.median(r['p50'] for r in mine):.2f} ms, "
                  f"p99 {statistics.median(r['p99'] for r in mine):.2f} ms "
                  f"({', '.join(format(r['p99'], '.2f') for r in mine)}), "
                  f"db {statistics.median(r['db_cores'] for r in mine):.2f} cores")
    finally:
        await client.close()
        embedded.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second offered (Poisson arrivals)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs depth 1 then depth 2")
    args = parser.parse_args()
    use_fast_event_loop()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
