#!/usr/bin/env python
"""Sheda RT: run the server, or manage accounts from the command line.

    python run.py                         serve on HOST:PORT (default 0.0.0.0:8000)
    python run.py --processes 4           N workers sharing the port (needs REDIS_URL)
    python run.py promote-admin alice     give a user role admin
    python run.py create-user --username bob --email bob@example.com --user-type agent
    python run.py demo-data               load demo data (accounts demo_*), once

The commands work whether or not the server is running: they connect to the
database the server uses (the embedded one is shared, never started twice).
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys

from config import SettingsError, load_settings
from sheda_rt.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="Sheda RT server and admin commands")
    parser.add_argument("--host", help="override HOST")
    parser.add_argument("--port", type=int, help="override PORT")
    parser.add_argument("--processes", type=int, help="worker processes sharing the port (N > 1 needs REDIS_URL)")
    sub = parser.add_subparsers(dest="command")
    promote = sub.add_parser("promote-admin", help="give an existing user role admin (by email or username)")
    promote.add_argument("who", help="email or username")
    create = sub.add_parser("create-user", help="create a verified user")
    create.add_argument("--username", required=True)
    create.add_argument("--email", required=True)
    create.add_argument("--user-type", choices=["client", "agent", "builder"], default="client")
    create.add_argument("--password", help="prompted for when omitted")
    create.add_argument("--phone")
    create.add_argument("--full-name")
    create.add_argument("--admin", action="store_true", help="also give role admin")
    demo = sub.add_parser("demo-data", help="load demo builders, projects, agents, listings, clients and chat (skipped when loaded)")
    demo.add_argument("--password", help="the demo accounts' password (default: generated and printed)")
    return parser


def make_app(ctx):
    """The HTTP and WebSocket edge for a server's context. Imported here, at call time:
    with --processes the metrics directory must be set before prometheus_client (which
    the handlers import) is first imported, and each worker builds its own application."""
    from handlers.app import make_app as handlers_app

    return handlers_app(ctx)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "processes": args.processes}.items() if v is not None}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"sheda: {exc}", file=sys.stderr)
        return 2
    # Commands print one result line; the server logs one JSON line per event.
    setup_logging(settings.log_level if args.command is None else "WARNING")
    if args.command is None:
        from sheda_rt.launcher import run_server

        return run_server(settings, app_factory=make_app)
    from sheda_rt import cli

    if args.command == "create-user" and not args.password:
        args.password = getpass.getpass("password: ")
    return cli.run_command(settings, args)


if __name__ == "__main__":
    sys.exit(main())
