"""Progress bars in log files: plain lines, a few per bar, instead of a terminal's redraws.

On a terminal a progress bar (nlpjobs' own, datasets' "Map", transformers' downloads) redraws one line with
carriage returns and cursor movements. Written to a file (a pod's log, ``nlpjobs run ... 2> run.log``) the same
bytes become one very long line full of ``\\r`` and ``ESC[A``. When standard error is not a terminal, the CLI
writes it through :class:`LogStream`: each bar becomes whole lines (its first state, then at most one every
``NLPJOBS_PROGRESS_INTERVAL_S`` seconds, default 30, and its last), cursor movements are dropped, and all other
output passes through unchanged. The lines keep tqdm's format, so ``nlpjobs status`` still finds the newest one
in a pod's log.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import IO, Any

_CURSOR = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BAR = re.compile(r"(\d+)%\|[^|]*\|\s*(\d+)/(\d+)")
LOG_INTERVAL_S = 30.0


class LogStream:
    """A text stream that writes progress-bar redraws as rate-limited whole lines to ``stream``."""

    def __init__(self, stream: IO[str], interval_s: float | None = None,
                 clock: Any = time.monotonic) -> None:
        self.stream = stream
        self.interval_s = float(os.environ.get("NLPJOBS_PROGRESS_INTERVAL_S", LOG_INTERVAL_S)) \
            if interval_s is None else interval_s
        self.clock = clock
        self._last: dict[str, tuple[float, str]] = {}  # bar name -> (when written, its "n/total")
        self._after_bar = False

    def write(self, text: str) -> int:
        if "\r" not in text and "\x1b" not in text and not (self._after_bar and not text.strip()):
            self._after_bar = False
            self.stream.write(text)  # ordinary output, as written (print() sends the newline separately)
            return len(text)
        for part in re.split(r"[\r\n]", _CURSOR.sub("", text)):
            if part.strip():
                self._write_part(part.rstrip())
        return len(text)

    def _write_part(self, part: str) -> None:
        bar = _BAR.search(part)
        if bar is None:
            self.stream.write(part + "\n")
            self._after_bar = False
            return
        name = part[:bar.start()].strip().rstrip(":").strip()
        count, now = f"{bar.group(2)}/{bar.group(3)}", self.clock()
        last = self._last.get(name)
        finished = bar.group(2) == bar.group(3)
        if last is not None and last[1] == count:
            return  # a redraw of what the log already says
        if last is not None and not finished and bar.group(2) != "0" and now - last[0] < self.interval_s:
            return  # too soon after this bar's last line (a bar at 0 is a new one under the same name)
        self._last[name] = (now, count)
        self.stream.write(part + "\n")
        self._after_bar = True  # a bar's closing newline would only add a blank line

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, buffer...: those of the real stream
        return getattr(self.stream, name)


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def use_log_lines() -> None:
    """Route standard error through :class:`LogStream` unless it is a terminal (or already routed)."""
    if not is_terminal(sys.stderr) and not isinstance(sys.stderr, LogStream):
        sys.stderr = LogStream(sys.stderr)  # type: ignore[assignment]
