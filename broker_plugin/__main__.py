"""Command line: ``python -m broker_plugin <command>``.

Settings are built once here (environment, ``.env``) and passed down; nothing else reads them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from broker_plugin import __version__
from broker_plugin.config import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m broker_plugin", description=__doc__)
    parser.add_argument("--version", action="version", version=f"broker_plugin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect", help="one JSON line per alert in a file, folder or .tar(.gz): ids, band, stamp status"
    )
    inspect.add_argument("path", type=Path, help="alert file, folder or tar archive")
    commands.add_parser("demo", help="self-contained demonstration; needs no outside service")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status."""
    args = _parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "inspect":
        from broker_plugin.commands.inspect import run_inspect

        if not args.path.exists():
            print(f"error: {args.path} does not exist", file=sys.stderr)
            return 2
        return run_inspect(args.path, settings, sys.stdout)
    from broker_plugin.commands.demo import run_demo

    return run_demo(settings, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
