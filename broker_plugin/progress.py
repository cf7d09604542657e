"""Progress bars with rate and ETA for the command lines; tqdm lives here.

Bars go to stderr (stdout carries the JSON lines of ``inspect`` and ``classify``) and stay quiet when
that stream is not a terminal, so logs, pipes and CI output get no bar at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TextIO, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

T = TypeVar("T")

#: The bar type (``update``, ``set_postfix_str``, ``close``, usable as a context manager).
Bar = tqdm


def progress(
    iterable: Iterable[T] | None = None,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    *,
    enabled: bool | None = None,
    file: TextIO | None = None,
    leave: bool = True,
) -> tqdm:
    """A progress bar over ``iterable`` (or, without one, counted with ``update``).

    Parameters
    ----------
    iterable
        What to iterate over; None for a bar advanced by hand.
    total
        Expected number of items (default: ``len(iterable)`` when it has one).
    desc
        Label in front of the bar.
    unit
        What one item is called: the rate reads ``<unit>/s``, or ``s/<unit>`` below one a second (so a
        leading space, ``" alerts"``, suits fast items and a bare singular, ``"member"``, slow ones).
    enabled
        True shows the bar whatever ``file`` is, False never; None shows it only when ``file`` is a
        terminal.
    file
        Where the bar goes (default: stderr at the time of the call).
    leave
        Keep the finished bar on screen (False for inner bars that repeat, such as one per epoch).

    Returns
    -------
    tqdm
        Iterate over it, or call ``update(n)``; close it (or use it in a ``with`` block) when done.
    """
    disable = None if enabled is None else not enabled
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        file=file if file is not None else sys.stderr,
        leave=leave,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def logs_above_bars() -> AbstractContextManager[None]:
    """While active, the root logger's console lines print above the progress bars, not through them."""
    return logging_redirect_tqdm()
