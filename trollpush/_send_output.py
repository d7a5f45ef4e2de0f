"""What ``trollpush send`` shows on a terminal: a progress bar while a large file is
uploaded, fed by the daemon's progress frames, then one summary line.

tqdm is imported when the first frame arrives, never for ``send --help`` or a send that
shows no bar (``tests/test_light.py``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, TextIO

from .messages import parts

if TYPE_CHECKING:
    from .client import SendResult

#: a file larger than this gets a progress bar on a terminal (a smaller one is done
#: before a bar would show anything)
BAR_ABOVE = 8 * 1024 * 1024
#: tqdm's default, with the unit after both counts (``12.0MiB/40.0MiB``)
BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}{unit}/{total_fmt}{unit} "
              "[{elapsed}<{remaining}, {rate_fmt}]")


def wants_bar(path: str) -> bool:
    """Whether the file is large enough for a bar (a file that cannot be stat'ed: no)."""
    try:
        return os.stat(path).st_size > BAR_ABOVE
    except (OSError, ValueError):
        return False


class Bar:
    """A progress bar on ``stream``, made at the first progress frame; a callback for
    ``client.send(progress=...)``."""

    def __init__(self, name: str, stream: TextIO) -> None:
        self._name = name
        self._stream = stream
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            # a terminal that reports 0 x 0 (a pty nobody sized: `script`, some CI
            # consoles) gets no bar at all from tqdm: draw it 80 x 24 there instead
            sized = _columns(self._stream) > 0
            self._bar = tqdm(total=total, desc=self._name, unit="iB", unit_scale=True,
                             unit_divisor=1024, leave=False, file=self._stream,
                             dynamic_ncols=sized, ncols=None if sized else 80,
                             nrows=None if sized else 24,
                             mininterval=0, miniters=1, bar_format=BAR_FORMAT)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Take the bar off the screen (the summary line takes its place)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0


def size_text(n: float) -> str:
    """Bytes in binary units: ``70000`` -> ``68.4 KiB``, ``512 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.0f} {unit}" if n >= 100 else f"{n:.1f}".removesuffix(".0") + f" {unit}"


def summary(result: SendResult) -> str:
    """``uploaded 512 MiB to s3://bucket/key in 43.1 s, 95 Mbit/s, crc32c:...``: one line
    for a file that landed (at several objects when the request fanned out)."""
    items = [data for _, data in parts(result.message)]
    size = int(items[0].get("size") or 0) if items else 0
    where = ", ".join(str(d.get("uri")) for d in items)
    seconds = result.seconds
    mbit = size * 8 / seconds / 1e6 if seconds > 0 else 0.0
    rate = f"{mbit:.0f}" if mbit >= 100 else f"{mbit:.1f}"
    text = f"uploaded {size_text(size)} to {where} in {seconds:.1f} s, {rate} Mbit/s"
    checksums = list(dict.fromkeys(str(d["checksum"]) for d in items if d.get("checksum")))
    return ", ".join([text, *checksums])
