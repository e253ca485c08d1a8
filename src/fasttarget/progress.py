"""Progress output that suits where it goes: a bar on a terminal, plain lines in a log file.

A tqdm bar redrawn in a file (a SLURM log, ``2> train.log``, a CI job) is a wall of carriage
returns. :class:`Progress` therefore draws its bar only when its stream is a terminal, and
otherwise writes one plain line per evaluation (:meth:`Progress.evaluated`) and nothing
between. Anything else a run reports goes through :meth:`Progress.note`, which writes above
a bar without breaking it. :func:`show_bar` is the same rule for the other bars (convert,
cache build, sweeps: a sweep reports one line per finished unit and keeps its bar for a
terminal).

Example:
    >>> import io
    >>> log = io.StringIO()  # not a terminal
    >>> progress = Progress(total=100, initial=0, desc="train A", enabled=True, stream=log)
    >>> progress.update(10, loss=2.3, img_per_s=1000.0)  # between evaluations: nothing
    >>> progress.evaluated(50, loss=1.9, img_per_s=1200.0, acc="31.00%")
    >>> progress.close()
    >>> log.getvalue()
    'train A: step 50/100  loss 1.900  1,200 img/s  acc 31.00%\\n'
"""

from __future__ import annotations

import sys
from typing import TextIO


def show_bar(enabled: bool, stream: TextIO | None = None) -> bool:
    """Whether to draw a progress bar: it was asked for and ``stream`` (stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return enabled and bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Training progress: step, loss, img/s and the last accuracy.

    Args:
        total: the last step.
        initial: the step training starts after (a resumed run).
        desc: what trains, e.g. ``"train A"``.
        enabled: report at all (``--progress/--no-progress``).
        stream: where to write (default stderr); a bar only if it is a terminal.
    """

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, stream: TextIO | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.desc, self.enabled = total, desc, enabled
        self.acc = "-"
        self.bar = None
        if show_bar(enabled, self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream, dynamic_ncols=True,
                            unit="step")

    def _status(self, loss: float, img_per_s: float) -> str:
        return f"loss {loss:.3f}  {img_per_s:,.0f} img/s  acc {self.acc}"

    def update(self, step: int, loss: float, img_per_s: float) -> None:
        """Between evaluations: move the bar (no output without one)."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(self._status(loss, img_per_s), refresh=False)

    def evaluated(self, step: int, loss: float, img_per_s: float, acc: str) -> None:
        """After an evaluation: show ``acc`` on the bar, or write one line without a bar."""
        self.acc = acc
        if self.bar is not None:
            self.update(step, loss, img_per_s)
        elif self.enabled:
            print(f"{self.desc}: step {step}/{self.total}  {self._status(loss, img_per_s)}", file=self.stream,
                  flush=True)

    def note(self, line: str) -> None:
        """A line that explains what the progress shows (above the bar when there is one)."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        elif self.enabled:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
