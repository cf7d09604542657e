"""Write ``deploy/broker-plugin.env.example``: every ``BROKER_PLUGIN_*`` setting, described, with its default.

The file is generated from :class:`broker_plugin.config.Settings` (through
:func:`broker_plugin.config.settings_rows`), so it cannot drift from the code: ``tests/deploy`` fails when
the committed file differs from what this script writes now.

Usage (from the repository root)::

    python deploy/env.py            # rewrite the file
    python deploy/env.py --check    # exit 1 if it is out of date
    python deploy/env.py --stdout   # print it

Defaults are written as active assignments (reading the file back gives exactly the default
``Settings``); settings without a default and every secret are written commented out and blank.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from broker_plugin.config import Settings, is_secret, settings_rows

ENV_FILE = Path(__file__).resolve().parent / "broker-plugin.env.example"
PREFIX = "BROKER_PLUGIN_"
_HEADER = """\
# Every setting of the ConvEntion broker plugin, with its description and default.
# GENERATED from broker_plugin.config.Settings by `python deploy/env.py`: do not edit by hand.
#
# Copy to `.env` in the working directory of `python -m broker_plugin run`, or pass it to a container
# (`docker run --env-file`, compose `env_file:`), and change what you need. Nested settings are joined by
# a double underscore. Lines starting with `#BROKER_PLUGIN_` are unset by default; secrets are left blank:
# take them from your secret store (Kubernetes: deploy/k8s/secret.example.yaml), never commit them.
"""


def _leaves(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, FieldInfo, str | None]]:
    """``(variable, field, section)`` for every leaf, in ``settings_rows`` order."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for var, leaf, _ in _leaves(annotation, f"{prefix}{name.upper()}__"):
                yield var, leaf, f"{name}: {field.description}"
            continue
        yield f"{prefix}{name.upper()}", field, None


def _value(field: FieldInfo) -> str | None:
    """The default as the environment spells it; ``None`` when unset or secret."""
    if is_secret(field.annotation):
        return None
    default = field.get_default(call_default_factory=True)
    if default is None:
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list | tuple):
        return ",".join(str(item) for item in default)
    text = str(default)
    if any(ch.isspace() for ch in text) or "#" in text:
        raise ValueError(f"default {text!r} needs quoting; extend deploy/env.py")
    return text


def render() -> str:
    """The environment file's text."""
    leaves = list(_leaves(Settings, PREFIX))
    rows = settings_rows()
    if [var for var, _, _ in leaves] != [var for var, _, _ in rows]:
        raise RuntimeError("deploy/env.py walks Settings differently from settings_rows()")
    out = [_HEADER]
    section: str | None = ""
    for (var, field, leaf_section), (_, _, description) in zip(leaves, rows, strict=True):
        if leaf_section != section:
            section = leaf_section
            out.append(f"\n# ---- {section or 'general'}\n")
        secret = " (secret)" if is_secret(field.annotation) else ""
        for line in textwrap.wrap(description + secret, width=106) or [""]:
            out.append(f"# {line}\n")
        value = _value(field)
        out.append(f"#{var}=\n" if value is None else f"{var}={value}\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    """Write, check or print the environment file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the committed file is out of date")
    mode.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = ENV_FILE.read_text() if ENV_FILE.exists() else ""
        if current != text:
            print(f"{ENV_FILE} is out of date: run python deploy/env.py", file=sys.stderr)
            return 1
        return 0
    ENV_FILE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
