"""What both command lines (``broker_plugin`` and ``broker_plugin_train``) share.

Their program name as the user typed it, plain-text help made from reST docstrings, and user errors: a
mistake the user can fix (a setting, a path, a config file, a model artifact) is one ``error:`` line on
stderr and exit status 2, without a traceback unless ``--debug`` asks for one. Exit status 1 is kept for
failures of the environment or at run time (e.g. no Kafka broker answers), 0 for success.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import textwrap
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

#: Exit status of a user error (also argparse's for bad arguments).
USER_ERROR = 2
#: Exit status of a failure at run time or of the environment.
RUNTIME_FAILURE = 1

# :role:`~pkg.mod.Name` -> Name, :role:`pkg.mod.Name` -> pkg.mod.Name, ``code`` -> code.
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``")


class UserError(Exception):
    """A mistake the user can fix: each line becomes one ``error:`` line, exit status 2.

    Parameters
    ----------
    *lines
        What is wrong, one problem per line (newlines inside a line are folded into spaces).
    """

    def __init__(self, *lines: str) -> None:
        self.lines = [one_line(line) for line in lines] or ["unknown error"]
        super().__init__("; ".join(self.lines))


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, newlines included, folded into one space."""
    return " ".join(str(text).split())


def plain_text(text: str) -> str:
    """Docstring text with its reST markup made plain: ````x```` -> x, ``:class:`~a.b.C``` -> C."""

    def role(match: re.Match[str]) -> str:
        target = match.group(2).strip()
        return target.rsplit(".", 1)[-1] if match.group(1) else target

    return _LITERAL.sub(r"\1", _ROLE.sub(role, text))


def help_width() -> int:
    """Columns for help text: the terminal's, as argparse uses, at most 100."""
    return max(40, min(shutil.get_terminal_size().columns, 100) - 2)


def help_paragraphs(text: str, width: int | None = None) -> str:
    """``text`` (a docstring, reST allowed) as plain paragraphs filled to ``width``.

    Blank lines separate paragraphs; lines indented deeper than the paragraph start (examples) are kept
    as they are.
    """
    width = width or help_width()
    out: list[str] = []
    for block in re.split(r"\n\s*\n", textwrap.dedent(plain_text(text)).strip()):
        lines = block.splitlines()
        if any(line.startswith(" ") for line in lines):
            out.append(block)
        else:
            out.append(textwrap.fill(" ".join(lines), width))
    return "\n\n".join(out)


def definition_list(items: Sequence[tuple[str, str]], width: int | None = None, indent: int = 2) -> str:
    """``(term, text)`` pairs as a plain-text list: the term on its own line, the text filled below it."""
    width = width or help_width()
    pad = " " * indent
    lines: list[str] = []
    for term, text in items:
        lines.append(f"{pad}{term}")
        if text:
            lines.append(textwrap.fill(text, width, initial_indent=pad * 3, subsequent_indent=pad * 3))
    return "\n".join(lines)


def program_name(module: str, script: str, argv0: str | None = None) -> str:
    """How the user started the program: ``script`` for the console script, else ``python -m module``.

    Python 3.11's argparse shows ``__main__.py`` for ``python -m``; this names the command to type.
    """
    name = Path(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "")).name
    return script if Path(name).stem == script else f"python -m {module}"


def add_debug_option(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Add ``--debug`` to ``parser``; sub-command parsers (``top`` False) leave it unset unless given.

    So ``--debug`` works before and after the sub-command name alike.
    """
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the traceback of a user error (configuration, paths, model artifact) too",
    )


def print_error(message: str, err: TextIO | None = None) -> None:
    """Write ``error: <message>`` as one line on ``err`` (default: stderr at the time of the call)."""
    stream = err if err is not None else sys.stderr
    stream.write(f"error: {one_line(message)}\n")
    stream.flush()


def report_user_error(exc: UserError, *, debug: bool = False, err: TextIO | None = None) -> int:
    """Print ``exc`` (its traceback first when ``debug``); return the exit status, 2."""
    stream = err if err is not None else sys.stderr
    if debug:
        traceback.print_exception(exc, file=stream)
    for line in exc.lines:
        print_error(line, stream)
    return USER_ERROR


def artifact_error(path: Path, exc: Exception, variable: str) -> UserError:
    """The user error for a model artifact that cannot be loaded (``exc``: an ``ArtifactError``).

    Parameters
    ----------
    path
        The artifact directory the settings name.
    exc
        Why loading it failed.
    variable
        The environment variable that sets ``path``.
    """
    from broker_plugin.inference.errors import ArtifactMissingError  # torch: only once loading failed

    what = "no model artifact" if isinstance(exc, ArtifactMissingError) else "unusable model artifact"
    return UserError(f"{what} at {path} ({variable}): {exc}")
