"""The `idcscan` command: one entry point; each part registers its own subcommands.

Parts register through `register(subparsers)` in their `commands` module, which must stay light:
heavy imports (torch, onnxruntime, Flask, Celery) happen inside the handlers, so that e.g.
`idcscan score` never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from idcscan import __version__
from idcscan.core.errors import IdcscanError


def build_parser() -> argparse.ArgumentParser:
    from idcscan.core import commands as core_commands

    parser = argparse.ArgumentParser(
        prog="idcscan", description="Detect invasive ductal carcinoma in H&E breast slides."
    )
    parser.add_argument("--version", action="version", version=f"idcscan {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core_commands.register(subparsers)
    for part in ("trainer", "worker", "api"):
        try:
            module = __import__(f"idcscan.{part}.commands", fromlist=["register"])
        except ModuleNotFoundError as exc:  # a part not built yet
            if exc.name not in (f"idcscan.{part}", f"idcscan.{part}.commands"):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    try:
        return int(args.func(args) or 0)
    except (IdcscanError, FileNotFoundError, ValueError) as exc:
        # Bad input is a one-line message, not a traceback.
        print(f"idcscan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
