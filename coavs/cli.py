"""The ``coavs`` command line. Each subcommand is a function ``cmd_<name>(args)`` plus its parser setup.

User mistakes (bad paths, bad values) end with one clear line on stderr and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line."""


def cmd_info(args) -> int:
    import json

    from coavs import info

    data = info.collect()
    print(json.dumps(data, indent=2, default=str) if args.json else info.format_report(data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coavs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="versions, devices and the backends each op can use")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"coavs {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"coavs {args.command}: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coavs {args.command}: interrupted", file=sys.stderr)
        return 130
