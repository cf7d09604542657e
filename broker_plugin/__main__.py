"""The ConvEntion alert-broker plugin: ``broker-plugin <command>`` (or ``python -m broker_plugin <command>``).

Settings are built once here (environment, ``.env``) and passed down; nothing else reads them. Exit
status: 0 done; 1 a failure at run time or of the environment (e.g. no Kafka broker answered: one
``error:`` line, no traceback); 2 a user error (bad arguments, an invalid setting, a path that does not
exist, a missing or invalid model artifact, a bad state URL: one ``error:`` line, no traceback unless
``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from broker_plugin import __version__
from broker_plugin.cli import (
    RUNTIME_FAILURE,
    UserError,
    add_debug_option,
    definition_list,
    help_paragraphs,
    print_error,
    program_name,
    report_user_error,
)
from broker_plugin.commands.stop_signal import StopSignal
from broker_plugin.config import Settings, settings_error_lines, settings_rows
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.progress import logs_above_bars

_DESCRIPTION = (
    "The ConvEntion alert-broker plugin: classifies the image time series of Rubin and ZTF alerts (AGN,"
    " SNIa, Variable, SNOther), as a Kafka service or offline over alert files. Each command has its own"
    " --help."
)
_EPILOG = (
    "Exit status: 0 done; 1 a failure at run time (e.g. no Kafka broker answers); 2 a user error (bad"
    " arguments, an invalid setting, a path that does not exist, a missing or invalid model artifact),"
    ' printed as one "error: ..." line without a traceback (--debug shows it, as does'
    " BROKER_PLUGIN_LOG_LEVEL=DEBUG).\n\n"
    "Every command reads its settings from BROKER_PLUGIN_* environment variables or a .env file in the"
    ' working directory; "run --help" lists them all. Progress bars (replay, classify) go to stderr, and'
    " only when it is a terminal."
)

_COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "the long-lived service (all settings from env / .env)",
        "The long-lived service: consume alerts from the Kafka topics, classify every object that has enough"
        " frames, publish the classifications (and dead letters), commit the offsets. Every setting comes"
        " from the environment or a .env file; all of them are listed below. It stops cleanly on SIGTERM or"
        " SIGINT.\n\nExit status: 0 after a clean stop; 1 when no Kafka broker answers within"
        " BROKER_PLUGIN_KAFKA__STARTUP_TIMEOUT_S or the service stops on a fatal error; 2 for an invalid"
        " setting, model artifact or state URL.",
    ),
    "demo": (
        "embedded broker + replay of bundled alerts + service + summary",
        "The whole service on this machine, nothing outside: starts an embedded Kafka-compatible broker,"
        " replays the bundled simulated Rubin alerts into it, runs the service with the model of"
        " BROKER_PLUGIN_MODEL__ARTIFACT (default: the shipped one) and a temporary SQLite store, and prints"
        " a summary (alerts, classifications, accuracy, throughput, latency).",
    ),
    "replay": (
        "archived alerts (files, folders, .tar/.tar.gz) into a topic",
        "Archived alerts (Avro container files, folders, .tar/.tar.gz archives) into a Kafka topic, in time"
        " order, as the surveys send them: Rubin alerts one per message with Confluent framing, ZTF alerts"
        " one file per message, each with a producer_timestamp header. The brokers must answer within 5 s"
        " (else exit status 1 with one error line). A progress bar with rate and ETA shows on a terminal.",
    ),
    "inspect": (
        "one JSON line per alert: ids, band, stamp status",
        "One JSON line per alert on stdout: survey, ids, band, midpointMjdTai, the cutout's original and"
        " normalised shape, valid fraction, quality flags, and status ok or the error's reason. Exit status"
        " 0 when every alert was usable, 1 when some were not.",
    ),
    "classify": (
        "offline: the whole pipeline over alert files",
        "Offline, no Kafka: the whole pipeline over alert files (file, folder or .tar/.tar.gz), one JSON"
        " line per classification or rejected alert on stdout; a progress bar on stderr when it is a"
        " terminal. Exit status 0 when every alert was usable, 1 when some were not, 2 when the command"
        " cannot run (a bad --state, an unreachable store, a model that does not load).",
    ),
}


def settings_help() -> str:
    """Every setting as plain text: environment variable, default and meaning (``run --help``)."""
    rows = [
        (f"{var} (default: {'unset' if default == '(unset)' else default})", text)
        for var, default, text in settings_rows()
    ]
    return "settings (environment variables, or the same names in a .env file):\n" + definition_list(rows)


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=program_name("broker_plugin", "broker-plugin"),
        description=help_paragraphs(_DESCRIPTION),
        epilog=help_paragraphs(_EPILOG),
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"broker_plugin {__version__}")
    add_debug_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub: dict[str, argparse.ArgumentParser] = {}
    for name, (short, long) in _COMMANDS.items():
        epilog = settings_help() if name == "run" else 'Settings: see "run --help".'
        sub[name] = commands.add_parser(
            name, help=short, description=help_paragraphs(long), epilog=epilog, formatter_class=raw
        )
        add_debug_option(sub[name], top=False)
    replay = sub["replay"]
    replay.add_argument("path", type=Path, help="alert file, folder or tar archive")
    replay.add_argument("--topic", required=True, help="topic to produce to")
    replay.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: the settings')")
    replay.add_argument("--rate", type=float, default=0.0, help="alerts per second (0: as fast as possible)")
    replay.add_argument(
        "--key-by-object", action="store_true", help="key messages by diaObjectId (per-object order kept)"
    )
    sub["inspect"].add_argument("path", type=Path, help="alert file, folder or tar archive")
    sub["classify"].add_argument("path", type=Path, help="alert file, folder or tar archive")
    sub["classify"].add_argument("--state", help="state store URL (default: a temporary SQLite store)")
    return parser


def load_settings() -> Settings:
    """The settings from the environment and ``.env``.

    Raises
    ------
    UserError
        One line per invalid setting, naming its environment variable and the value given.
    """
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        raise UserError(*settings_error_lines(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status."""
    args = _parser().parse_args(argv)
    debug = bool(args.debug)
    # The service's signal handler goes in before the settings and the model stack are loaded (seconds).
    stop = StopSignal() if args.command == "run" else None
    try:
        settings = load_settings()
        debug = debug or settings.log_level == "DEBUG"
        log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        logging.basicConfig(level=settings.log_level, format=log_format)
        return _dispatch(args, settings, stop)
    except UserError as exc:
        return report_user_error(exc, debug=debug)


def _dispatch(args: argparse.Namespace, settings: Settings, stop: StopSignal | None) -> int:
    path = getattr(args, "path", None)
    if path is not None and not path.exists():
        raise UserError(f"{path} does not exist")
    if args.command == "run":
        from broker_plugin.commands.run import run_service

        return run_service(settings, stop)
    if args.command == "replay":
        from broker_plugin.commands.replay import replay

        kafka = settings.kafka
        if args.bootstrap_servers:
            kafka = kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
        try:
            with logs_above_bars():
                sent = replay(args.path, args.topic, kafka, rate=args.rate, key_by_object=args.key_by_object)
        except BrokerPluginError as exc:  # Kafka unreachable or deliveries failed: the message says why
            print_error(str(exc))
            return RUNTIME_FAILURE
        print(f"replayed {sent} alerts into {args.topic}")
        return 0
    if args.command == "inspect":
        from broker_plugin.commands.inspect import run_inspect

        return run_inspect(args.path, settings, sys.stdout)
    if args.command == "classify":
        from broker_plugin.commands.classify import classify_path

        with logs_above_bars():
            return classify_path(args.path, settings, sys.stdout, state_url=args.state)
    from broker_plugin.commands.demo import run_demo

    return run_demo(settings, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
