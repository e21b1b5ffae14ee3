"""`agent-platform`: serve | worker | migrate | token | services | sessions follow.

Every command reads the same settings; with DATABASE_URL / REDIS_URL unset, every command
attaches to (or starts) the same embedded daemons under `EMBEDDED_DATA_DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from app.settings import Settings, get_settings


def _fail(message: str, code: int = 2) -> int:
    print(f"agent-platform: {message}", file=sys.stderr)
    return code


def _database_revision(settings: Settings, database_url: str) -> str | None:
    from app.db.engine import create_engine
    from app.db.migrations import current_revision

    async def read() -> str | None:
        engine = create_engine(settings.database, database_url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.db.migrations import downgrade, head_revision, upgrade
    from app.embedded import resolve_database_url

    url = resolve_database_url(settings)
    if args.revision.startswith("-") or args.downgrade:
        downgrade(settings.migrations_dir, url, args.revision)
    else:
        upgrade(settings.migrations_dir, url, args.revision)
    current = _database_revision(settings, url)
    print(f"database at revision {current} (head {head_revision(settings.migrations_dir)})")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.embedded import resolve_database_url, resolve_redis_url
    from app.main import SERVE_WORKERS_ENV, build_context, create_app

    database_url = resolve_database_url(settings)
    redis_url = resolve_redis_url(settings)
    if problem := _ensure_migrated(settings, database_url, args.migrate):
        return _fail(problem)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_config": None,
        "access_log": False,
        "loop": "uvloop",
        "http": "httptools",
        "timeout_graceful_shutdown": 30,
    }
    if args.processes > 1:
        from app.api.processes import ProcessGroup

        # each process builds its own app from the environment
        os.environ.update(
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                SERVE_WORKERS_ENV: str(args.workers),
            }
        )
        group = ProcessGroup(
            options, args.processes, log_level=settings.log_level, log_json=settings.log_json
        )
        return group.run()
    context = build_context(settings, database_url=database_url, redis_url=redis_url)
    uvicorn.run(create_app(settings, context=context, workers=args.workers), **options)
    return 0


def _ensure_migrated(settings: Settings, database_url: str, migrate: bool) -> str | None:
    """None if the database is at head (after migrating, when asked); else the error."""
    from app.db.migrations import head_revision, upgrade

    head = head_revision(settings.migrations_dir)
    current = _database_revision(settings, database_url)
    if current == head:
        return None
    if migrate:
        upgrade(settings.migrations_dir, database_url)
        return None
    return (
        f"the database is at revision {current or '(empty)'} but this code needs {head}."
        " Run `agent-platform migrate` first (or pass --migrate)."
    )


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from app.embedded import resolve_database_url, resolve_redis_url
    from app.worker_main import run_worker

    database_url = resolve_database_url(settings)
    if problem := _ensure_migrated(settings, database_url, args.migrate):
        return _fail(problem)
    redis_url = resolve_redis_url(settings)
    uvloop.run(run_worker(settings, database_url, args.concurrency, redis_url))
    return 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from app.api.auth import Role, mint_token

    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    known = {role.value for role in Role}
    if unknown := [role for role in roles if role not in known]:
        return _fail(f"unknown roles {unknown}; choose from {sorted(known)}")
    ttl = args.ttl or settings.auth.dev_token_ttl_seconds
    print(mint_token(settings.auth, tenant=args.tenant, sub=args.sub, roles=roles, ttl_seconds=ttl))
    return 0


def cmd_services(settings: Settings, args: argparse.Namespace) -> int:
    from app.embedded import EmbeddedServiceError, embedded_services

    postgres, redis = embedded_services(
        settings.embedded.data_dir,
        max_connections=settings.embedded.postgres_max_connections,
        timeout=settings.embedded.start_timeout_seconds,
    )
    try:
        if args.action == "start":
            postgres.ensure_running()
            redis.ensure_running()
        elif args.action == "stop":
            for service in (redis, postgres):
                stopped = service.stop()
                print(f"{service.name}: {'stopped' if stopped else 'was not running'}")
            return 0
    except EmbeddedServiceError as exc:
        return _fail(str(exc), 1)
    statuses = [postgres.status(), redis.status()]
    if args.json:
        print(json.dumps([status.as_dict() for status in statuses], indent=2))
    else:
        for status in statuses:
            state = f"running (pid {status.pid})" if status.running else "stopped"
            print(f"{status.name:9} {state:22} port {status.port}  socket {status.socket}")
            print(f"{'':9} log {status.log_file}")
    if not settings.uses_embedded_postgres or not settings.uses_embedded_redis:
        print("note: DATABASE_URL or REDIS_URL is set; the server does not use these daemons")
    return 0


def cmd_sessions_follow(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from app.sessions.follow_cli import follow

    token = args.token or os.environ.get("AGENT_PLATFORM_TOKEN")
    if not token:
        return _fail(
            "a token is needed: --token or AGENT_PLATFORM_TOKEN (see `agent-platform token`)"
        )
    return follow(args.url, token, args.session_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent-platform", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--migrate", action="store_true", help="upgrade the database first if it is behind"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=4,
        help="worker slots run inside the API process (0: the API alone)",
    )
    serve.add_argument(
        "--processes",
        type=int,
        default=1,
        help="API processes on the port, each with its own socket (SO_REUSEPORT) and --workers slots",
    )
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser("worker", help="run a worker pool (scale out: start more)")
    worker.add_argument("--concurrency", type=int, default=16, help="sessions run at once")
    worker.add_argument("--migrate", action="store_true", help="upgrade the database first")
    worker.set_defaults(handler=cmd_worker)

    migrate = commands.add_parser("migrate", help="upgrade the database schema (Alembic)")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.add_argument("--downgrade", action="store_true", help="downgrade to REVISION")
    migrate.set_defaults(handler=cmd_migrate)

    token = commands.add_parser("token", help="print a development JWT")
    token.add_argument("--tenant", required=True)
    token.add_argument("--sub", required=True)
    token.add_argument("--roles", default="client", help="comma-separated: client,reviewer,admin")
    token.add_argument("--ttl", type=int, default=None, help="seconds (default from settings)")
    token.set_defaults(handler=cmd_token)

    services = commands.add_parser("services", help="the embedded PostgreSQL and Valkey")
    services.add_argument("action", choices=["status", "start", "stop"])
    services.add_argument("--json", action="store_true")
    services.set_defaults(handler=cmd_services)
    sessions = commands.add_parser("sessions", help="work with sessions over the API")
    session_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    follow = session_commands.add_parser("follow", help="print a session's live events")
    follow.add_argument("session_id")
    follow.add_argument("--url", default="http://127.0.0.1:8000", help="the API's base URL")
    follow.add_argument("--token", default=None, help="JWT (default: $AGENT_PLATFORM_TOKEN)")
    follow.set_defaults(handler=cmd_sessions_follow)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        return _fail(f"invalid settings:\n{exc}")
    from app.observability.logging import configure_logging

    configure_logging(settings.log_level, json_lines=settings.log_json)
    result: int = args.handler(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
