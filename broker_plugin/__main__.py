"""Command line: ``python -m broker_plugin <command>``.

Settings are built once here (environment, ``.env``) and passed down; nothing else reads them. Exit
status: 0 done, 1 the environment failed (e.g. no Kafka broker answered: one ``error:`` line, no
traceback), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from broker_plugin import __version__
from broker_plugin.config import Settings
from broker_plugin.exceptions import BrokerPluginError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m broker_plugin", description=__doc__)
    parser.add_argument("--version", action="version", version=f"broker_plugin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="the long-lived service (all settings from env / .env)")
    commands.add_parser("demo", help="embedded broker + replay of bundled alerts + service + summary")
    replay = commands.add_parser("replay", help="archived alerts (files, folders, .tar/.tar.gz) into a topic")
    replay.add_argument("path", type=Path, help="alert file, folder or tar archive")
    replay.add_argument("--topic", required=True, help="topic to produce to")
    replay.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: the settings')")
    replay.add_argument("--rate", type=float, default=0.0, help="alerts per second (0: as fast as possible)")
    replay.add_argument(
        "--key-by-object", action="store_true", help="key messages by diaObjectId (per-object order kept)"
    )
    inspect = commands.add_parser("inspect", help="one JSON line per alert: ids, band, stamp status")
    inspect.add_argument("path", type=Path, help="alert file, folder or tar archive")
    classify = commands.add_parser("classify", help="offline: the whole pipeline over alert files")
    classify.add_argument("path", type=Path, help="alert file, folder or tar archive")
    classify.add_argument("--state", help="state store URL (default: a temporary SQLite store)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status."""
    args = _parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = getattr(args, "path", None)
    if path is not None and not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    if args.command == "run":
        from broker_plugin.commands.run import run_service

        return run_service(settings)
    if args.command == "replay":
        from broker_plugin.commands.replay import replay

        kafka = settings.kafka
        if args.bootstrap_servers:
            kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
        try:
            sent = replay(args.path, args.topic, kafka, rate=args.rate, key_by_object=args.key_by_object)
        except BrokerPluginError as exc:  # Kafka unreachable or deliveries failed: the message says why
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"replayed {sent} alerts into {args.topic}")
        return 0
    if args.command == "inspect":
        from broker_plugin.commands.inspect import run_inspect

        return run_inspect(args.path, settings, sys.stdout)
    if args.command == "classify":
        from broker_plugin.commands.classify import classify_path

        return classify_path(args.path, settings, sys.stdout, state_url=args.state)
    from broker_plugin.commands.demo import run_demo

    return run_demo(settings, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
