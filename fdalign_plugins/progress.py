"""Progress for long steps: a tqdm bar on a terminal, plain lines in a log file.

Off a terminal (a batch job's log, ``| tee``) tqdm's carriage-return bars turn into
noise or nothing; :class:`PlainProgress` prints a start line, a line every
``every`` seconds, and an end line with the rate instead — for long steps only
(:data:`PLAIN_MIN_ITEMS`, :data:`PLAIN_MIN_SECONDS`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO, Union

#: ``progress`` values: ``False`` (silent), ``True`` (a tqdm bar) or ``"plain"`` (lines).
Progress = Union[bool, str]

#: Plain lines are printed for steps of at least this many units, or that have already
#: taken ``PLAIN_MIN_SECONDS``: a log gets a line per long step, not ten per small one.
PLAIN_MIN_ITEMS = 1000
PLAIN_MIN_SECONDS = 2.0


class PlainProgress:
    """A tqdm-like counter (``update``/``close``) that prints whole lines.

    Args:
        total: units of work (images, steps).
        desc: what is being done.
        unit: unit name.
        every: seconds between progress lines.
        stream: where lines go (default ``sys.stderr``).
    """

    def __init__(self, total: int, desc: str, unit: str = "img", every: float = 15.0,
                 stream: Optional[TextIO] = None):
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, every
        self.stream = stream or sys.stderr
        self.n = 0
        self.t0 = self.last = time.monotonic()
        self.started = False
        if self.total >= PLAIN_MIN_ITEMS:
            self._start()

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _start(self) -> None:
        self.started = True
        self._say(f"{self.desc}: {self.total} {self.unit} to do")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.started and self.total and now - self.t0 >= PLAIN_MIN_SECONDS:
            self._start()  # a small step that turned out slow: say so after all
        if self.started and now - self.last >= self.every and self.n < self.total:
            self.last = now
            self._say(f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f} %, "
                      f"{now - self.t0:.0f} s)")

    def close(self) -> None:
        if self.started:
            dt = time.monotonic() - self.t0
            self._say(f"{self.desc}: {self.n}/{self.total} {self.unit} done in {dt:.1f} s "
                      f"({self.n / max(dt, 1e-9):.0f} {self.unit}/s)")
        self.started = False  # close twice: one end line


def progress_bar(total: int, desc: str, progress: Progress, unit: str = "img", **tqdm_kw: Any):
    """A tqdm bar (``progress is True``), plain lines (``"plain"``), or a silent counter."""
    if progress == "plain":
        return PlainProgress(total, desc, unit=unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, **tqdm_kw)


def cli_progress(quiet: bool, stream: Optional[TextIO] = None) -> Progress:
    """What a command shows: nothing with ``--quiet``, a bar on a terminal, else plain lines."""
    if quiet:
        return False
    stream = stream or sys.stderr
    return True if stream.isatty() else "plain"
