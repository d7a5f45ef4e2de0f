"""The directory watcher: real files in real directories, a real daemon, moto, posttroll.

A file is taken when it is closed after writing or moved in (never on create), or, when
polled, once unchanged for ``settle`` seconds; it lands once, whole, and is announced.
Hostile names, symlinks, lost directories and kill -9 are covered; so are the bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from trollpush.config import WatchConfig, parse_config
from trollpush.config.schema import config_schema
from trollpush.errors import ConfigError
from trollpush.inputs import watch
from trollpush.inputs._dirs import Pending, matcher
from trollpush.messages import Limits
from trollpush.models import Rejection, Request
from trollpush.service import Service
from trollpush.stats import Stats

from .helpers import Listener, daemon_process, running_daemon, wait_until
from .test_config_schema import errors

GRANULE = "{platform_name}_{start_time:%Y%m%d_%H%M}_{orbit:05d}.h5"


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


def watch_config(base: dict[str, Any], bucket: str, *entries: dict[str, Any]
                 ) -> dict[str, Any]:
    """The test suite's config with the watcher as its only input and one target for
    what it takes (subject /watch/...)."""
    cfg = {k: v for k, v in base.items() if k not in ("subscribe", "requests")}
    cfg["watch"] = [{"subject": "/watch/in/", **e} for e in entries]
    cfg["targets"] = [{"name": "watched", "topics": ["/watch/"],
                       "destination": f"s3://{bucket}/in/{{uid}}",
                       "publish_topic": "/uploaded/watch/"}]
    return cfg


def probe(directory: Path, listener: Listener, timeout: float = 15.0, each: float = 0.3
          ) -> None:
    """Make sure the listener hears the daemon: drop symlinks (refused, so announced as
    failures) until one failure arrives within ``each`` seconds; their announcements are
    dropped from then on."""
    for _ in range(int(timeout / each)):
        link = directory / f"probe-{uuid.uuid4().hex}_20261121_1005_00001.h5"
        link.symlink_to("/nonexistent")
        try:
            listener.wait_for(lambda ms, u=str(link): any(  # type: ignore[misc]
                m.type == "failure" and m.data.get("uri") == u for m in ms), timeout=each)
        except AssertionError:
            continue
        finally:
            link.unlink()
            listener.ignored.add(str(link))
        with listener._lock:
            listener.messages = [m for m in listener.messages
                                 if not str(m.data.get("uri", "")).startswith(
                                     str(directory / "probe-"))]
        return
    raise AssertionError("the listener never heard the daemon")


def landed(listener: Listener, name: str, timeout: float = 20.0) -> Any:
    """The completion of the file called ``name``."""
    msgs = listener.wait_for(lambda ms: any(m.type == "file" and m.data.get("uid") == name
                                            for m in ms), timeout, f"{name!r} announced")
    return next(m for m in msgs if m.type == "file" and m.data.get("uid") == name)


def body(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def accepted(daemon: Service) -> int:
    return daemon.counts["accepted"]


# --- config -------------------------------------------------------------------------------


def test_a_watch_section_loads_with_its_defaults(inbox: Path) -> None:
    config = parse_config({"endpoints": {"default": None},
                           "targets": [{"destination": "s3://b/"}],
                           "watch": [{"path": str(inbox), "subject": "/in/"},
                                     {"path": str(inbox / "later"), "subject": "/nfs/",
                                      "pattern": GRANULE, "recursive": True,
                                      "poll_interval": 5, "settle": 10,
                                      "scan_existing": False}]})
    assert config.watch == (
        WatchConfig(path=str(inbox), subject="/in/"),
        WatchConfig(path=str(inbox / "later"), subject="/nfs/", pattern=GRANULE,
                    recursive=True, poll_interval=5.0, settle=10.0, scan_existing=False))
    assert config.requests is None and config.subscribe is None  # watch alone will do
    summary = config.summary()
    assert f"input  watch: {inbox} as /in/ (inotify)" in summary
    assert "polled every 5 s, recursive" in summary and "new files only" in summary


@pytest.mark.parametrize(("watch_section", "key", "expected"), [
    pytest.param({"path": "/srv/in"}, "watch", "a list of directories", id="not-a-list"),
    pytest.param([5], "watch[0]", "a mapping with at least path and subject", id="entry"),
    pytest.param([{"subject": "/in/"}], "watch[0].path", "(required)", id="no-path"),
    pytest.param([{"path": "in", "subject": "/in/"}], "watch[0].path", "absolute",
                 id="relative-path"),
    pytest.param([{"path": "/etc/hostname", "subject": "/in/"}], "watch[0].path",
                 "a directory (this path exists and is not one)", id="a-file"),
    pytest.param([{"path": "/srv/in"}], "watch[0].subject", "a posttroll subject",
                 id="no-subject"),
    pytest.param([{"path": "/srv/in", "subject": "/in /"}], "watch[0].subject",
                 "without whitespace", id="subject-with-space"),
    pytest.param([{"path": "/srv/in", "subject": "/in/", "patern": "*"}],
                 "watch[0].patern", "no such key", id="unknown-key"),
    pytest.param([{"path": "/srv/in", "subject": "/in/", "pattern": "{orbit"}],
                 "watch[0].pattern", "a valid trollsift pattern", id="bad-trollsift"),
    pytest.param([{"path": "/srv/in", "subject": "/in/", "pattern": "*/x.h5"}],
                 "watch[0].pattern", "on the base name", id="glob-with-slash"),
    pytest.param([{"path": "/srv/in", "subject": "/in/", "poll_interval": 0}],
                 "watch[0].poll_interval", ">= 0.05", id="poll-zero"),
    pytest.param([{"path": "/srv/in", "subject": "/in/", "poll_interval": "5s"}],
                 "watch[0].poll_interval", "a number", id="poll-string"),
    pytest.param([{"path": "/srv/in", "subject": "/in/", "settle": -1}],
                 "watch[0].settle", ">= 0", id="settle-negative"),
    pytest.param([{"path": "/srv/in", "subject": "/in/", "recursive": "yes"}],
                 "watch[0].recursive", "true or false", id="recursive-string"),
    pytest.param([{"path": "/srv/in", "subject": "/in/", "scan_existing": 1}],
                 "watch[0].scan_existing", "true or false", id="scan-existing-int"),
])
def test_each_watch_mistake_names_key_value_and_expectation(
        watch_section: object, key: str, expected: str, request: pytest.FixtureRequest
) -> None:
    data = {"endpoints": {"default": None}, "targets": [{"destination": "s3://b/"}],
            "watch": watch_section}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    problems = [p for p in info.value.problems if p.key == key]
    assert problems and expected in problems[0].expected, info.value
    # only the validator looks at the disk and parses trollsift patterns
    if request.node.callspec.id not in ("a-file", "bad-trollsift"):
        assert errors(config_schema(), data), "the schema accepts it"


def test_watch_rules_across_sections(inbox: Path, tmp_path: Path) -> None:
    """A watched directory outside allowed_roots, one watched twice, no targets."""
    data = {"endpoints": {"default": None}, "daemon": {"allowed_roots": [str(inbox)]},
            "watch": [{"path": str(tmp_path), "subject": "/a/"},
                      {"path": str(inbox), "subject": "/b/"},
                      {"path": f"{inbox}/", "subject": "/c/"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    text = str(info.value)
    assert f"watch[0].path: got {str(tmp_path)!r}, expected a directory under " \
           "daemon.allowed_roots" in text
    assert "watch[2].path" in text and "watch[1] does not watch already" in text
    assert "targets: got None, expected at least one target when `watch` is set" in text
    assert "subscribe/requests" not in text  # watch is an input


# --- the parts ----------------------------------------------------------------------------


def test_patterns_are_trollsift_or_globs_on_the_base_name() -> None:
    assert matcher(None)("anything\n")
    glob = matcher("*.h5")
    assert glob("a.h5") and glob("line\nbreak.h5") and not glob("a.h5.part")
    granule = matcher(GRANULE)
    assert granule("NOAA-20_20261121_1005_12345.h5")
    assert not granule("NOAA-20_20261399_1005_12345.h5")  # no 13th month: not wanted
    assert not granule(".NOAA-20_20261121_1005_12345.h5.tmp")


def test_pending_files_are_ready_once_unchanged_for_settle_seconds() -> None:
    pending = Pending(settle=2.0, limit=2)
    assert not pending.see("a", (1, 1, 1), now=0.0)  # first sight: never ready
    assert not pending.see("a", (2, 2, 1), now=1.0)  # changed: the clock starts again
    assert not pending.see("a", (2, 2, 1), now=2.5)  # unchanged for 1.5 s
    assert pending.see("a", (2, 2, 1), now=3.0)  # unchanged for 2 s: ready, let go
    assert len(pending) == 0
    pending.see("b", (1, 1, 2), now=0.0)
    pending.see("c", (1, 1, 3), now=0.0)
    assert not pending.see("d", (1, 1, 4), now=0.0) and len(pending) == 2  # full: later
    assert Pending(settle=0, limit=1).see("e", (1, 1, 5), 0.0) is False  # settle 0: one look


# --- a real daemon ------------------------------------------------------------------------


def test_a_file_written_slowly_lands_once_whole_and_is_announced(
        base_config: dict[str, Any], inbox: Path, listener: Listener, s3: Any,
        bucket: str) -> None:
    cfg = watch_config(base_config, bucket, {"path": str(inbox), "pattern": "*.h5"})
    chunks = [os.urandom(64 * 1024) for _ in range(6)]
    with running_daemon(cfg) as daemon:
        probe(inbox, listener)
        path = inbox / "slow.h5"
        with open(path, "wb") as out:  # one open, six writes, one close
            for chunk in chunks:
                out.write(chunk)
                out.flush()
                threading.Event().wait(0.15)  # a slow producer (not a wait for a result)
            assert accepted(daemon) == 0, "taken before it was closed"
        done = landed(listener, "slow.h5")
        assert accepted(daemon) == 1
    assert done.subject == "/uploaded/watch/"
    assert done.data["uri"] == f"s3://{bucket}/in/slow.h5"
    assert done.data["size"] == 6 * 64 * 1024
    assert body(s3, bucket, "in/slow.h5") == b"".join(chunks)
    assert keys(s3, bucket) == ["in/slow.h5"]
    assert [m.data["uid"] for m in listener.of_type("file")] == ["slow.h5"]


def test_a_temporary_file_renamed_into_place_lands_under_its_final_name(
        base_config: dict[str, Any], inbox: Path, listener: Listener, s3: Any,
        bucket: str) -> None:
    cfg = watch_config(base_config, bucket, {"path": str(inbox), "pattern": "*.h5"})
    with running_daemon(cfg) as daemon:
        probe(inbox, listener)
        temporary = inbox / ".final.h5.part"
        temporary.write_bytes(b"whole")
        temporary.rename(inbox / "final.h5")
        landed(listener, "final.h5")
        assert accepted(daemon) == 1
    assert keys(s3, bucket) == ["in/final.h5"]
    assert not listener.of_type("failure")


def test_the_pattern_picks_the_files_and_the_targets_parse_them(
        base_config: dict[str, Any], inbox: Path, listener: Listener, s3: Any,
        bucket: str) -> None:
    """Only files that match the watch pattern are taken; the targets' patterns give
    them metadata as for any file message."""
    cfg = watch_config(base_config, bucket, {"path": str(inbox), "pattern": GRANULE})
    cfg["targets"][0].update(pattern=GRANULE, aliases={"platform_name": {"NOAA-20": "j01"}},
                             destination=f"s3://{bucket}/{{platform_name}}/{{orbit}}/{{uid}}")
    with running_daemon(cfg) as daemon:
        probe(inbox, listener)
        (inbox / "notes.txt").write_text("not a granule")
        (inbox / "NOAA-20_20261121_1005_12345.h5").write_bytes(b"granule")
        done = landed(listener, "NOAA-20_20261121_1005_12345.h5")
        assert accepted(daemon) == 1
    assert done.data["platform_name"] == "NOAA-20" and done.data["orbit"] == 12345
    assert keys(s3, bucket) == ["j01/12345/NOAA-20_20261121_1005_12345.h5"]


def test_recursive_watch_takes_files_in_new_subdirectories(
        base_config: dict[str, Any], inbox: Path, listener: Listener, s3: Any,
        bucket: str, tmp_path: Path) -> None:
    """A subdirectory made and written into at once (before its watch exists) is
    scanned; one made later is watched; a symlinked directory is not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    cfg = watch_config(base_config, bucket, {"path": str(inbox), "recursive": True})
    with running_daemon(cfg):
        probe(inbox, listener)
        (inbox / "2026" / "11" / "21").mkdir(parents=True)
        (inbox / "2026" / "11" / "21" / "a.h5").write_bytes(b"a")
        landed(listener, "a.h5")
        (inbox / "2026" / "11" / "22").mkdir()
        (inbox / "2026" / "11" / "22" / "b.h5").write_bytes(b"b")
        landed(listener, "b.h5")
        (inbox / "elsewhere").symlink_to(outside)
        listener.ignored.add(str(inbox / "elsewhere"))  # refused as a symlink itself
        (outside / "not-followed.h5").write_bytes(b"x")
        (inbox / "c.h5").write_bytes(b"c")  # after it: the one above would have come first
        landed(listener, "c.h5")
    assert keys(s3, bucket) == ["in/a.h5", "in/b.h5", "in/c.h5"]


def test_polling_waits_for_settle_then_takes_the_file_once(
        base_config: dict[str, Any], inbox: Path, listener: Listener, s3: Any,
        bucket: str) -> None:
    cfg = watch_config(base_config, bucket, {"path": str(inbox), "poll_interval": 0.1,
                                             "settle": 1.0, "pattern": "*.h5",
                                             "recursive": True})
    with running_daemon(cfg) as daemon:
        probe(inbox, listener, each=3.0)  # a probe too waits for settle
        path = inbox / "polled.h5"
        with open(path, "wb") as out:
            for _ in range(5):  # pauses shorter than settle: never taken in between
                out.write(b"x" * 1000)
                out.flush()
                threading.Event().wait(0.3)
            assert accepted(daemon) == 0, "taken before it settled"
        (inbox / "sub").mkdir()
        (inbox / "sub" / "second.h5").write_bytes(b"y")
        (inbox / "linked").symlink_to(inbox / "sub")  # not followed: second.h5 once
        landed(listener, "polled.h5")
        landed(listener, "second.h5")
        assert accepted(daemon) == 2
    assert body(s3, bucket, "in/polled.h5") == b"x" * 5000


def test_scan_existing_takes_what_was_there_before_the_start(
        base_config: dict[str, Any], tmp_path: Path, s3: Any, bucket: str) -> None:
    """With scan_existing (the default) files already there are taken, inotify or
    polled; without it only new ones are."""
    dirs = {name: tmp_path / name for name in ("scanned", "polled", "new-only")}
    for name, d in dirs.items():
        d.mkdir()
        (d / f"old-{name}.h5").write_bytes(name.encode())
    cfg = watch_config(base_config, bucket, {"path": str(dirs["scanned"])},
                       {"path": str(dirs["polled"]), "poll_interval": 0.1},
                       {"path": str(dirs["new-only"]), "scan_existing": False})
    with running_daemon(cfg) as daemon:
        (dirs["new-only"] / "new.h5").write_bytes(b"new")
        wait_until(lambda: daemon.counts["completed"] == 3, 15, "three files landed")
        assert accepted(daemon) == 3
    assert keys(s3, bucket) == ["in/new.h5", "in/old-polled.h5", "in/old-scanned.h5"]


def test_a_restart_scans_again_and_the_journal_answers_what_landed(
        base_config: dict[str, Any], inbox: Path, s3: Any, bucket: str) -> None:
    """scan_existing takes the files already there at each start; one that landed
    already, unchanged, is answered from the journal (announced, not uploaded again);
    so is the same content written again (a close-write: a new request)."""
    cfg = watch_config(base_config, bucket, {"path": str(inbox)})
    (inbox / "kept.h5").write_bytes(b"landed once")
    with running_daemon(cfg) as daemon:  # (taken at start: counted, not listened for)
        wait_until(lambda: daemon.counts["completed"] == 1, 15, "the first upload")
        assert daemon.transfer.completed == 1
    with running_daemon(cfg) as daemon:
        wait_until(lambda: daemon.counts["completed"] == 1, 15, "the scan answered")
        (inbox / "kept.h5").write_bytes(b"landed once")  # written again, the same
        wait_until(lambda: daemon.counts["completed"] == 2, 15, "the rewrite answered")
        assert daemon.transfer.completed == 0  # answered from the journal both times
    assert keys(s3, bucket) == ["in/kept.h5"]


def test_a_directory_that_goes_away_is_watched_again_when_it_is_back(
        base_config: dict[str, Any], tmp_path: Path, listener: Listener, s3: Any,
        bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    """Missing at start, then there, then removed, then a file in its place, then a
    directory again: each is logged, the daemon stays up, and files land each time."""
    caplog.set_level(logging.INFO, logger="trollpush")
    inbox = tmp_path / "inbox"
    cfg = watch_config(base_config, bucket, {"path": str(inbox)})

    def logged(text: str) -> None:
        wait_until(lambda: text in caplog.text, 15, text)

    with running_daemon(cfg):
        logged("it does not exist; trying again every 2 s")
        inbox.mkdir()
        (inbox / "one.h5").write_bytes(b"1")  # there before the watch: the scan takes it
        wait_until(lambda: keys(s3, bucket) == ["in/one.h5"], 15, "one.h5 landed")
        probe(inbox, listener)
        shutil.rmtree(inbox)
        logged("it was removed")
        inbox.write_text("a file where the directory was")
        logged("it is not a directory")
        inbox.unlink()
        inbox.mkdir()
        logged("watching again")
        (inbox / "two.h5").write_bytes(b"2")
        landed(listener, "two.h5")
    assert keys(s3, bucket) == ["in/one.h5", "in/two.h5"]


def test_hostile_names_and_symlinks_are_refused_with_a_reason_or_taken(
        base_config: dict[str, Any], inbox: Path, listener: Listener, s3: Any,
        bucket: str, tmp_path: Path) -> None:
    """A newline in a name is taken as it is (whether the store takes such a key is the
    store's business: moto answers 404); bytes that are not UTF-8 and symlinks (made in
    place, or moved in) are refused with a reason, their targets never read; the daemon
    keeps going."""
    secret = tmp_path / "secret.h5"
    secret.write_bytes(b"never uploaded")
    newline = inbox / "two\nlines.h5"
    cfg = watch_config(base_config, bucket, {"path": str(inbox)})
    with running_daemon(cfg) as daemon:
        probe(inbox, listener)
        newline.write_bytes(b"newline")
        raw = os.path.join(os.fsencode(inbox), b"latin-\xe9.h5")
        with open(raw, "wb") as out:
            out.write(b"not utf-8")
        (inbox / "made-in-place.h5").symlink_to(secret)
        (tmp_path / "moved.h5").symlink_to(secret)
        (tmp_path / "moved.h5").rename(inbox / "moved-in.h5")
        (inbox / "after.h5").write_bytes(b"still working")
        landed(listener, "after.h5")
        msgs = listener.wait_for(lambda ms: len([m for m in ms if m.type == "failure"])
                                 >= 4, 15, "the refusals and the newline's outcome")
        assert daemon.counts["accepted"] == 2  # the newline and after.h5
    reasons = {m.data["uri"]: m.data["reason"] for m in msgs if m.type == "failure"}
    assert reasons == {f"{inbox}/latin-\\xe9.h5": "bad_message",
                       f"{inbox}/made-in-place.h5": "not_a_file",
                       f"{inbox}/moved-in.h5": "not_a_file",
                       str(newline): "permanent_error"}  # moto's 404 on such a key
    assert keys(s3, bucket) == ["in/after.h5"]


def test_a_symlink_out_of_the_allowed_roots_is_refused_as_such(
        base_config: dict[str, Any], inbox: Path, listener: Listener, s3: Any,
        bucket: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.h5"
    secret.write_bytes(b"never uploaded")
    cfg = watch_config(base_config, bucket, {"path": str(inbox), "pattern": "*.h5"})
    cfg["daemon"]["allowed_roots"] = [str(inbox)]
    with running_daemon(cfg):
        probe(inbox, listener)
        (inbox / "escape.h5").symlink_to(secret)
        msgs = listener.wait_for(lambda ms: any(m.type == "failure" for m in ms))
    (fail,) = [m for m in msgs if m.type == "failure"]
    assert fail.data["uri"] == str(inbox / "escape.h5")
    assert fail.data["reason"] == "not_allowed"
    assert keys(s3, bucket) == []


# --- kill -9 ------------------------------------------------------------------------------


def _journaled(journal: Path) -> int:
    if not journal.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])


@pytest.mark.slow
def test_a_taken_file_survives_kill_9_and_lands_after_the_restart(
        base_config: dict[str, Any], tmp_path: Path, listener: Listener, s3: Any,
        bucket: str, s3_url: str, silent_server: str) -> None:
    """The daemon's first life: its directory is missing at start (logged, escaped, on
    one line), then made; the file dropped in is journaled, its upload hangs on a
    store that never answers, and the daemon is killed with SIGKILL.  The second life
    does not scan (scan_existing off): it finishes the file from its journal alone."""
    inbox = tmp_path / "in\ncoming"
    journal = tmp_path / "journal.sqlite"
    cfg = watch_config(base_config, bucket, {"path": str(inbox), "scan_existing": False})
    cfg["journal"] = {"path": str(journal)}
    cfg["endpoints"]["default"].update(url=silent_server, prewarm=0, attempt_timeout=60)
    with daemon_process(cfg, tmp_path) as (proc, log):
        wait_until(lambda: "trollpush ready" in log.read_text(), 30, "the first start")
        wait_until(lambda: "does not exist" in log.read_text(), 15, "the missing directory")
        assert "in\\ncoming: it does not exist" in log.read_text()
        assert not any(line.startswith("coming") for line in log.read_text().splitlines())
        inbox.mkdir()
        wait_until(lambda: "watching again" in log.read_text(), 15, "the directory watched")
        (inbox / "survivor.h5").write_bytes(b"journaled before the upload")
        wait_until(lambda: _journaled(journal) == 1, 15, "the file journaled")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=15) == -signal.SIGKILL
    cfg["endpoints"]["default"]["url"] = s3_url
    again = tmp_path / "again"
    again.mkdir()
    with daemon_process(cfg, again) as (proc, log):
        done = landed(listener, "survivor.h5", timeout=60)
        assert "resuming 1 request(s)" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert done.data["uri"] == f"s3://{bucket}/in/survivor.h5"
    assert body(s3, bucket, "in/survivor.h5") == b"journaled before the upload"


# --- bounds and stop, with a stand-in for the service --------------------------------------


class Intake:
    """The service as the input sees it: ``submit`` blocks while ``open`` is clear."""

    def __init__(self) -> None:
        self.limits = Limits()
        self.stats = Stats()
        self.items: list[Request | Rejection] = []
        self.open = asyncio.Event()
        self.fatal_errors: list[BaseException] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def submit(self, item: Request | Rejection) -> bool:
        await self.open.wait()
        self.items.append(item)
        return isinstance(item, Request)

    def fatal(self, what: str, err: BaseException) -> None:
        self.fatal_errors.append(err)

    def abandon(self, request: Request, detail: str) -> None:
        raise AssertionError("the watcher abandons nothing")

    def status(self) -> dict[str, Any]:
        raise AssertionError("the watcher serves no status")

    async def resume(self, request: Request) -> None:
        raise AssertionError("the watcher adopts nothing")

    async def hand_over(self, request: Request, detail: str) -> None:
        raise AssertionError("the watcher adopts nothing")


def _watcher(intake: Intake, *configs: WatchConfig) -> watch.WatchInput:
    return watch.WatchInput(tuple(configs), intake)


def _paths(items: list[Request | Rejection]) -> set[str]:
    return {i.files[0].uri for i in items if isinstance(i, Request)}


async def test_a_burst_beyond_every_queue_is_held_in_bounds_and_all_taken(
        inbox: Path) -> None:
    """20,000 files while the service takes nothing: the watcher holds at most its
    bounded queues (the kernel's event queue overflows and says so); once the service
    takes again, every file is taken (a rescan finds what the kernel dropped)."""
    intake = Intake()
    watcher = _watcher(intake, WatchConfig(path=str(inbox), subject="/in/"))
    await watcher.start()
    most = 0
    try:
        names = [f"f{i:05d}.h5" for i in range(20_000)]
        for i, name in enumerate(names):
            (inbox / name).write_bytes(b"")
            if i % 500 == 0:
                await asyncio.sleep(0)  # let the watcher read as it would
                most = max(most, watcher.held)
        await wait_until_async(lambda: len(watcher._ready) == watch.READY, 30,
                               "the ready queue full")
        most = max(most, watcher.held)
        assert most <= watch.READY, most  # the kernel holds the rest, then drops it
        intake.open.set()
        await wait_until_async(lambda: len(_paths(intake.items)) == len(names), 120,
                               "every file taken")
    finally:
        await watcher.close()
    assert _paths(intake.items) == {str(inbox / n) for n in names}
    assert watcher.notifier is not None and watcher.notifier.overflows >= 1
    assert len(intake.items) < len(names) * 1.1  # few taken twice (the rescan skips most)
    assert not intake.fatal_errors


async def wait_until_async(pred: Any, limit: float, what: str) -> None:
    for _ in range(int(limit / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {limit} s waiting for {what}")


async def test_stop_is_prompt_idempotent_and_answers_what_it_cut_off(
        inbox: Path, tmp_path: Path) -> None:
    """A file held in submit at stop is answered by undelivered(); a ready file of a
    directory without scan_existing that was never taken too (as not taken); nothing
    of the watcher is left running."""
    later = tmp_path / "later"
    later.mkdir()
    intake = Intake()
    watcher = _watcher(intake, WatchConfig(path=str(inbox), subject="/in/"),
                       WatchConfig(path=str(later), subject="/later/", scan_existing=False))
    before = set(threading.enumerate())
    await watcher.start()
    for i in range(watch.TAKERS + 1):  # one more than takers: one waits in the queue
        (later / f"f{i}.h5").write_bytes(b"x")
    await wait_until_async(lambda: len(watcher._ready) == 1, 15, "the takers all held")
    await watcher.stop()
    await watcher.stop()
    await watcher.close()
    left = watcher.undelivered()
    assert len([i for i in left if isinstance(i, Request)]) == watch.TAKERS
    (cut,) = [i for i in left if isinstance(i, Rejection)]
    assert cut.reason == "shutdown" and cut.subject == "/later/"
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("watch-")]
    wait_until(lambda: not [t for t in set(threading.enumerate()) - before
                            if t.name.startswith("trollpush-watch")], 5, "threads gone")
    assert not intake.items


def test_trollpush_check_shows_the_watched_directories(tmp_path: Path, inbox: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "watch.yaml"
    cfg.write_text(yaml.safe_dump({"endpoints": {"default": None},
                                   "targets": [{"destination": "s3://b/"}],
                                   "watch": [{"path": str(inbox), "subject": "/in/",
                                              "pattern": "*.h5"}]}))
    proc = subprocess.run([sys.executable, "-m", "trollpush", "check", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"input  watch: {inbox} as /in/ (inotify, pattern *.h5)" in proc.stdout
