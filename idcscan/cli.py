"""The `idcscan` command: one entry point; each part registers its own subcommands, and the demo,
which spans all parts, is registered here.

Parts register through `register(subparsers)` in their `commands` module, which must stay light:
heavy imports (torch, onnxruntime, Flask, Celery) happen inside the handlers, so that e.g.
`idcscan score` never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from idcscan import __version__
from idcscan.core.errors import IdcscanError


def build_parser() -> argparse.ArgumentParser:
    from idcscan.api import commands as api_commands
    from idcscan.core import commands as core_commands
    from idcscan.trainer import commands as trainer_commands
    from idcscan.worker import commands as worker_commands

    parser = argparse.ArgumentParser(
        prog="idcscan", description="Detect invasive ductal carcinoma in H&E breast slides."
    )
    parser.add_argument("--version", action="version", version=f"idcscan {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for part in (core_commands, trainer_commands, worker_commands, api_commands):
        part.register(subparsers)

    demo = subparsers.add_parser(
        "demo", help="the whole service on embedded defaults, end to end (no servers needed)"
    )
    demo.add_argument("--out", type=Path, default=Path("idcscan-demo"), help="where results go")
    demo.add_argument("--model", type=Path, help="ONNX model (default: the reference model)")
    demo.add_argument("--keep", action="store_true", help="keep the service's data folder and logs")
    demo.set_defaults(func=_demo)

    rule = subparsers.add_parser(
        "slide-rule",
        help="slide-level figures of a cross-validated comparison; sets its slide call rule",
    )
    rule.add_argument("comparison", type=Path, help="output folder of `idcscan compare`")
    rule.add_argument("--data", type=Path, required=True, help="the dataset it was trained on")
    rule.add_argument(
        "--min-patches",
        type=int,
        default=None,
        help="patients with more patches count as whole slides (default: the trainer's 200)",
    )
    rule.add_argument(
        "--no-apply", action="store_true", help="report only; leave best.onnx unchanged"
    )
    rule.set_defaults(func=_slide_rule)
    return parser


def _slide_rule(args: argparse.Namespace) -> int:
    from idcscan.slide_rule import run

    result = run(args.comparison, args.data, args.min_patches, apply=not args.no_apply)
    errors = result["errors"]
    print(
        f"{result['rule']}: {errors['missed_idc_slides']} of "
        f"{sum(s['kind'] == 'whole' for s in result['slides'])} whole slides missed, "
        f"{errors['false_idc_slides']} benign parts called IDC; "
        f"report in {args.comparison / 'slide-level.md'}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from idcscan.demo import run_demo

    return run_demo(args.out, args.model, args.keep)


# Slides, results, staged uploads and the SQLite databases hold patient data: whatever an idcscan
# process creates is its user's alone (files 0600, folders 0700), whichever library creates it
# (SQLite, Celery's broker, fsspec, OpenSlide's callers). Set for the life of the command, which
# for `api`, `worker` and `scheduler` is the life of the process and of every child it forks.
PRIVATE_UMASK = 0o077
EX_TEMPFAIL = 75


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    previous_umask = os.umask(PRIVATE_UMASK)
    try:
        return int(args.func(args) or 0)
    except (IdcscanError, FileNotFoundError, ValueError) as exc:
        # Bad input is a one-line message, not a traceback.
        print(f"idcscan: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Our database or broker out of reach is no bug either: one line, and the exit status
        # that tells a script to try again (sysexits' EX_TEMPFAIL).
        from idcscan.core.outage import unavailable

        what = unavailable(exc)
        if what is None:
            raise
        reason = str(exc.__cause__ or exc).strip().splitlines()
        print(
            f"idcscan: error: the {what} is unreachable: {reason[0] if reason else exc!r}",
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        return 130
    finally:
        os.umask(previous_umask)  # called in-process (tests), it leaves the caller's as it was


if __name__ == "__main__":
    sys.exit(main())
