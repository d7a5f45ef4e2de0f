"""How big the SQLite journal gets: fill a real one with N landed objects and measure it.

Each object is recorded the way the daemon records a file that lands: ``accepted``, then
``begin`` (the look-up and "transferring"), then ``concluded(finish=True)`` (the landed
index row; the request's rows go). Requests run ``--in-flight`` at a time, so that the
journal's group commits work as in the daemon. The file size is the main file plus its
``-wal`` while open, and the main file alone after ``close`` (which checkpoints)::

    .venv/bin/python -m benchmarks.journal_size 1000 20000 100000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from trollpush.journal import SQLiteJournal
from trollpush.models import Job, Request, SourceFile, Upload, UploadResult

MAX_OBJECTS = 1_000_000  # a bound on one run


def request(n: int) -> Request:
    """A trollstalker-like VIIRS file message, as posttroll decodes it."""
    start = dt.datetime(2026, 11, 21) + dt.timedelta(minutes=n)
    platform = ("NOAA-20", "NOAA-21", "Suomi-NPP")[n % 3]
    uid = f"{platform}_{start:%Y%m%d_%H%M}_{70000 + n:05d}.h5"
    path = f"/data/pps/import/viirs/{start:%Y/%m/%d}/{uid}"
    metadata = {"platform_name": platform, "sensor": ["viirs"], "orbit_number": 70000 + n,
                "start_time": start, "end_time": start + dt.timedelta(seconds=85),
                "data_processing_level": "1B", "format": "HDF5", "variant": "DR"}
    source = SourceFile(uri=path, path=Path(path), uid=uid,
                        stat=(20_000_000 + n, 1_790_000_000_000_000_000 + n, 4_000_000 + n))
    return Request(id=f"{os.urandom(8).hex()}", subject="/new/file/viirs/l1b", type="file",
                   data={**metadata, "uri": path, "uid": uid}, metadata=metadata,
                   files=(source,), origin="subscribe")


def job(req: Request) -> Job:
    src = req.files[0]
    start = req.metadata["start_time"]
    key = f"viirs/{req.metadata['platform_name']}/{start:%Y/%m/%d}/{src.uid}"
    return Job(request=req, target="viirs-l1", endpoint="default",
               uploads=(Upload(src, "l1-data", key),),
               metadata={**req.metadata, "orbit": req.metadata["orbit_number"]},
               publish_topic=f"/uploaded/viirs/{req.metadata['platform_name']}/")


async def one(journal: SQLiteJournal, n: int) -> None:
    req = request(n)
    await journal.accepted(req)
    j = job(req)
    stat = req.files[0].stat
    assert stat is not None
    await journal.begin(j, [stat])
    result = UploadResult(j.uploads[0], stat[0], 1, 0.8, etag=f'"{os.urandom(16).hex()}"',
                          checksum="AAAAAA==", checksum_algorithm="crc32c", parts=2,
                          source_stat=stat)
    await journal.concluded(j, (result,), finish=True)


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def kept(path: Path) -> int:
    """Landed objects in the index (at most ``keep_landed_max``)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM landed").fetchone()[0])


async def fill(path: Path, count: int, in_flight: int,
               limit: float) -> tuple[int, int, int, float]:
    """Record ``count`` landed objects; (bytes while open, bytes after close, objects kept,
    seconds)."""
    journal = SQLiteJournal(path)
    await journal.open()
    t0 = time.monotonic()
    gate = asyncio.Semaphore(in_flight)

    async def bounded(n: int) -> None:
        async with gate:
            if time.monotonic() - t0 > limit:
                raise TimeoutError(f"more than {limit:g} s for {count} objects")
            await one(journal, n)
    try:
        for start in range(0, count, 10_000):  # bounded memory: 10,000 tasks at a time
            await asyncio.gather(*(bounded(n) for n in range(start, min(count, start + 10_000))))
        seconds = time.monotonic() - t0
        open_bytes = size(path)
    finally:
        await journal.close()
    return open_bytes, size(path), kept(path), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("counts", nargs="+", type=int, help="landed objects per run")
    parser.add_argument("--in-flight", type=int, default=256, help="requests at once")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--dir", help="where to put the journals (default: a temporary "
                                      "directory on /tmp)")
    args = parser.parse_args()
    print(f"{'objects':>9} {'kept':>9} {'open (db+wal)':>14} {'closed':>11} "
          f"{'B/kept object':>14} {'s':>6}")
    for count in args.counts:
        if not 0 < count <= MAX_OBJECTS:
            parser.error(f"counts must be 1..{MAX_OBJECTS}")
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="journal-size-") as tmp:
            opened, closed, rows, seconds = asyncio.run(
                fill(Path(tmp) / "journal.sqlite", count, args.in_flight, args.time_limit))
        print(f"{count:>9,} {rows:>9,} {opened / 1e6:>11.2f} MB {closed / 1e6:>8.2f} MB "
              f"{closed / max(rows, 1):>14.0f} {seconds:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
