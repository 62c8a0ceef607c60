"""Subcommands of the core: `db upgrade`, `db downgrade`, `db current`, `storage gc`, `assemble`,
`settings`, `health`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="administer the database schema (Alembic migrations)")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="migrate the database to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_db_upgrade)
    down = db_sub.add_parser("downgrade", help="migrate the database down to a revision")
    down.add_argument("revision")
    down.set_defaults(func=_db_downgrade)
    current = db_sub.add_parser("current", help="print the database's revision")
    current.set_defaults(func=_db_current)

    storage = subparsers.add_parser("storage", help="maintain the stored slides and labels")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    gc = storage_sub.add_parser(
        "gc", help="remove slides and labels no job names, and stale staged uploads"
    )
    gc.add_argument(
        "--grace-s",
        type=int,
        default=None,
        help="keep anything younger than this many seconds (default 3600)",
    )
    gc.set_defaults(func=_storage_gc)

    assemble = subparsers.add_parser(
        "assemble",
        help="reassemble a patient's patches into a pyramidal TIFF with its ground truth",
    )
    assemble.add_argument("patient_dir", type=Path, help="<patient>/ folder holding 0/ and 1/")
    assemble.add_argument("--out", type=Path, required=True, help="SLIDE.tiff to write")
    assemble.set_defaults(func=_assemble)

    settings = subparsers.add_parser("settings", help="print every setting, its value and meaning")
    settings.add_argument("--markdown", action="store_true", help="as a Markdown table")
    settings.set_defaults(func=_settings)

    health = subparsers.add_parser(
        "health",
        help="a container's health check: exit 0 when this service works, 1 (and why) when not",
    )
    health_sub = health.add_subparsers(dest="health_of", required=True, metavar="SERVICE")
    api = health_sub.add_parser(
        "api", help="the API answers /readyz: database and broker reachable"
    )
    api.add_argument("--url", default="http://127.0.0.1:8000", help="the API's base URL")
    api.add_argument("--timeout-s", type=float, default=3.0)
    api.set_defaults(func=_health_api)
    for role, beats in (("worker", "every 10 s"), ("scheduler", "after each reconciler round")):
        check = health_sub.add_parser(
            role, help=f"the {role}'s heartbeat file (touched {beats}) is fresh"
        )
        check.add_argument(
            "--heartbeat",
            type=Path,
            default=None,
            help=f"its file (default: idcscan-{role}-UID.heartbeat in the temporary folder)",
        )
        check.add_argument(
            "--max-age-s",
            type=float,
            default=None,
            help="oldest heartbeat that counts as live (default: worker 60 s, scheduler three "
            "reconcile intervals plus 60 s)",
        )
        check.set_defaults(func=_health_heartbeat, role=role)


def _db_upgrade(args: argparse.Namespace) -> int:
    from idcscan.core.migrate import upgrade
    from idcscan.core.settings import get_settings

    settings = get_settings()
    upgrade(settings.database, args.revision)
    print(f"database at {args.revision}: {_safe_url(settings.database)}")
    return 0


def _db_downgrade(args: argparse.Namespace) -> int:
    from idcscan.core.migrate import downgrade
    from idcscan.core.settings import get_settings

    downgrade(get_settings().database, args.revision)
    return 0


def _db_current(args: argparse.Namespace) -> int:
    from idcscan.core.migrate import current_revision
    from idcscan.core.settings import get_settings

    print(current_revision(get_settings().database) or "(empty database)")
    return 0


def _storage_gc(args: argparse.Namespace) -> int:
    from idcscan.core.db import make_engine, make_sessionmaker
    from idcscan.core.settings import get_settings
    from idcscan.core.storage import Storage
    from idcscan.core.storage_gc import GRACE_S, collect_garbage

    settings = get_settings()
    engine = make_engine(settings.database)
    try:
        grace_s = GRACE_S if args.grace_s is None else args.grace_s
        done = collect_garbage(Storage(settings.storage), make_sessionmaker(engine), grace_s)
    finally:
        engine.dispose()
    print(
        f"storage gc: removed {done.blobs} blobs no job names and {done.staged} stale staged "
        f"files, {done.bytes} bytes"
    )
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def settings_markdown() -> str:
    """The settings table of the README: variable, default, meaning (a test keeps them equal)."""
    from pydantic_core import PydanticUndefined

    from idcscan.core.settings import Settings

    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default is None or default is PydanticUndefined else f"`{default}`"
        lines.append(f"| `IDCSCAN_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(lines)


def _settings(args: argparse.Namespace) -> int:
    from idcscan.core.settings import Settings, get_settings

    if args.markdown:
        print(settings_markdown())
        return 0
    current = get_settings()
    for name, field in Settings.model_fields.items():
        value = getattr(current, name)
        if name == "database_url" and value:
            value = _safe_url(value)
        print(f"IDCSCAN_{name.upper()}={'' if value is None else value}\n    {field.description}")
    return 0


def _health_api(args: argparse.Namespace) -> int:
    """Readiness over HTTP from inside the API's container: the standard library only, so the
    check costs an interpreter start and one request, and needs no curl in the image."""
    import urllib.error
    import urllib.request

    url = args.url.rstrip("/") + "/readyz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout_s) as reply:
            print(f"healthy: {url} answered {reply.status}")
            return 0
    except urllib.error.HTTPError as exc:  # 503: database or broker unreachable
        reason = f"answered {exc.code}: {exc.read(500).decode(errors='replace').strip()}"
    except (OSError, ValueError) as exc:  # refused, timed out, malformed URL
        reason = f"did not answer: {exc}"
    print(f"unhealthy: {url} {reason}")
    return 1


def _health_heartbeat(args: argparse.Namespace) -> int:
    from idcscan.core.heartbeat import WORKER_BEAT_S, age_s, default_path
    from idcscan.core.settings import get_settings

    path = args.heartbeat or default_path(args.role)
    max_age = args.max_age_s
    if max_age is None:
        if args.role == "worker":
            max_age = 6 * WORKER_BEAT_S
        else:
            max_age = 3 * get_settings().reconcile_interval_s + 60
    age = age_s(path)
    if age is None:
        print(f"unhealthy: no {args.role} heartbeat at {path}")
        return 1
    if age > max_age:
        print(
            f"unhealthy: the {args.role}'s last heartbeat is {age:.0f} s old (at most {max_age:.0f})"
        )
        return 1
    print(f"healthy: the {args.role}'s last heartbeat is {age:.0f} s old")
    return 0


def _assemble(args: argparse.Namespace) -> int:
    from idcscan.core.assemble import assemble

    done = assemble(args.patient_dir, args.out)
    print(
        f"{done.tiff}: {done.width} x {done.height} px at 4 um/px, {done.levels} levels, "
        f"{done.patches} patches ({done.idc_patches} IDC)\n{done.geojson}\n{done.tiles_csv}"
    )
    return 0
