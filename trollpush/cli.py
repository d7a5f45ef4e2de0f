"""Console script ``trollpush``: run, send, status, check, match, schema, demo,
convert-dispatch, doctor."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import logging.config
import logging.handlers
import os
import queue
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import yaml

from . import logsafe
from ._startup import StartupSignals
from .errors import ConfigError, TrollpushError, UsageError

LOG_FORMAT = "[%(asctime)s %(levelname)-8s %(name)s] %(message)s"
EXIT_STDOUT_CLOSED = 141  # what a shell reports for a program ended by SIGPIPE (128 + 13)
logger = logging.getLogger("trollpush")


def setup_logging(log_config: str | None, verbose: bool) -> None:
    """pytroll habit: ``-c/--log-config`` takes a YAML dictConfig; else a plain console log.

    Either way, every record is one line: control characters in messages are escaped
    (:mod:`trollpush.logsafe`), whatever formatters the dictConfig names.
    """
    logsafe.install()
    if log_config:
        try:
            with open(log_config, encoding="utf-8") as fh:
                settings = yaml.safe_load(fh)
            # trollpush's module loggers exist before this runs: keep them unless told otherwise
            settings.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(settings)
        except (OSError, yaml.YAMLError, ValueError, TypeError, AttributeError) as err:
            raise UsageError(f"--log-config {log_config}: {err}") from err
    else:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT,
                            stream=sys.stderr)
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    # botocore and aiohttp are chatty at DEBUG and may echo request headers: keep them quiet
    for name in ("botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.INFO))


@contextlib.contextmanager
def logging_in_a_thread() -> Iterator[None]:
    """The root logger's handlers run in a thread of their own while the daemon runs.

    A log line per file costs the event loop only the record and a queue put; the
    formatting, the write and the flush happen elsewhere, so a slow disk or a stalled
    terminal never holds up uploads.  Whatever is queued is written at the end.
    """
    root = logging.getLogger()
    handlers = root.handlers[:]
    if not handlers:
        yield
        return
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    root.handlers = [logging.handlers.QueueHandler(records)]
    listener.start()
    try:
        yield
    finally:
        listener.stop()  # writes what is queued, then the thread ends
        root.handlers = handlers


def _json_default(obj: object) -> str:
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    return str(obj)


def cmd_run(args: argparse.Namespace) -> int:
    startup: StartupSignals = args.startup
    setup_logging(args.log_config, args.verbose)
    from .config import load_config
    from .service import serve

    config = load_config(args.config)
    for warning in config.warnings:
        logger.warning("config: %s", warning)
    if startup.requested is not None:
        logger.info("%s during start-up: stopped before starting", startup.requested.name)
        return 0
    with logging_in_a_thread():
        serve(config, startup=startup)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config)
    print(config.summary())
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    from posttroll.message import Message

    from .client import parse_meta
    from .config import load_config
    from .messages import build_request, decode_message
    from .models import ObjectOptions
    from .objects import describe
    from .route import Router, provenance

    config = load_config(args.config)
    path = str(Path(args.file).absolute())
    data = {**parse_meta(args.meta or []), "uri": path, "uid": Path(path).name}
    # through the wire format, so values are typed exactly as the daemon would see them
    message = decode_message(Message(args.topic, "file", data).encode())
    request = build_request(message, origin="cli", check=False)
    result = Router(config).route(request)
    say = logsafe.escape  # one line per destination, whatever the file name holds
    targets = {t.name: t for t in config.targets}
    for job in result.jobs:
        held = result.held.get(job.target or "")
        by = f", by {held}" if held else ""  # which of several condition sets took it
        for up in job.uploads:
            print(say(f"{job.target}: {up.url} (endpoint {job.endpoint}, announce on "
                      f"{job.publish_topic}{by})"))
            if up.options != ObjectOptions():  # what the object is given (never a key)
                print(say(f"    object: {describe(up.options)}"))
        if args.verbose and job.target in targets:
            for f in provenance(targets[job.target], request, request.files[0]):
                note = "".join([
                    f"; the pattern read {f.overruled[0]!r}" if f.overruled else "",
                    f"; composes as {f.aliased[0]!r} (alias)" if f.aliased else ""])
                print(say(f"    {f.name} = {f.value!r}  from the {f.source}{note}"))
    for fail in result.failures:
        print(say(f"{fail.target or '-'}: FAILS {fail.reason}: {fail.detail}"))
    if args.verbose or not result.jobs:
        for name, why in result.skipped.items():
            print(say(f"{name}: no match: {why}"))
    return 0 if result.jobs else 1


def cmd_send(args: argparse.Namespace) -> int:
    from . import _send_output as show
    from .client import Unreachable, parse_meta, send

    # on a terminal: a bar for a large file, then a summary line; else silent on success
    shown = not (args.quiet or args.json or args.no_wait) and sys.stdout.isatty()
    bar = (show.Bar(os.path.basename(args.file), sys.stderr)
           if shown and sys.stderr.isatty() and show.wants_bar(args.file) else None)
    try:
        meta = parse_meta(args.meta or [])
        result = send(args.file, args.dest, meta=meta, endpoint=args.endpoint,
                      server=args.server, timeout=args.timeout,
                      result_timeout=args.result_timeout, wait=not args.no_wait,
                      overwrite=args.overwrite, progress=bar)
    except Unreachable as err:
        print(f"trollpush send: {err}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    if shown and result.ok:
        print(show.summary(result))
    if args.json:
        print(json.dumps({"subject": result.message.subject, "type": result.message.type,
                          "data": result.message.data}, default=_json_default))
    if not result.ok:
        print(f"trollpush send: upload failed: {logsafe.escape(result.error or '')}",
              file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .status import command

    return command(args)


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .config.defaults import REQUEST_ADDRESS

    st = sub.add_parser("status", help="what a running daemon is doing; --check: is it "
                                       "healthy (exit 0 healthy, 1 degraded, 2 unreachable)")
    where = st.add_mutually_exclusive_group()
    where.add_argument("--server", default=REQUEST_ADDRESS,
                       help="the daemon's request address (default: %(default)s)")
    where.add_argument("--http", metavar="URL",
                       help="ask the http input instead (http://HOST:PORT; GET /status)")
    st.add_argument("--token-file", help="with --http: the bearer token's file "
                                         "(http.token_file)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.add_argument("--check", action="store_true",
                    help="exit 1 when degraded: a journal backlog older than "
                         "daemon.max_age/2, or an endpoint whose uploads all failed for "
                         "--failing-for seconds; 2 when the daemon does not answer")
    st.add_argument("--failing-for", type=float, default=60.0, metavar="SECONDS",
                    help="how long every upload to an endpoint must have failed for it "
                         "to count as degraded (default: %(default)s)")
    st.add_argument("--timeout", type=float, default=5.0,
                    help="seconds to wait for the answer (default: %(default)s)")
    st.set_defaults(func=cmd_status)


class _Version(argparse.Action):
    """``--version``: looked up only when asked for (package metadata, no imports)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the versions and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from .status import versions

        found = versions()
        print(f"trollpush {found.pop('version')} ("
              + ", ".join(f"{k} {v}" for k, v in found.items()) + ")")
        parser.exit()


def cmd_schema(args: argparse.Namespace) -> int:
    from .config.schema import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(config_path=args.config, files=args.files, verbose=args.verbose)


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_dispatch_text
    from .errors import ConfigProblem

    try:
        text = Path(args.dispatch).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([ConfigProblem("<file>", args.dispatch,
                                         f"a readable UTF-8 file ({err})")],
                          args.dispatch) from err
    result = convert_dispatch_text(text, source=args.dispatch, publish_port=args.publish_port,
                                   publish_nameservers=args.publish_nameserver)
    for line in result.skipped:
        print(logsafe.escape(f"trollpush convert-dispatch: not converted: {line}"),
              file=sys.stderr)
    for line in result.warnings:
        print(logsafe.escape(f"trollpush convert-dispatch: warning: {line}"), file=sys.stderr)
    if args.output:
        try:
            Path(args.output).write_text(result.text, encoding="utf-8")
        except OSError as err:
            raise UsageError(f"-o {args.output}: {err.strerror}") from err
        print(f"wrote {args.output}: {len(result.origins)} target(s), "
              f"{len(result.warnings)} warning(s); next: trollpush check {args.output}",
              file=sys.stderr)
    else:
        print(result.text, end="")
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="the whole pipeline on an embedded local S3 server")
    demo.add_argument("--config", help="demo config (default: examples/demo.yaml)")
    demo.add_argument("--files", type=int, default=8, help="how many files to announce")
    demo.add_argument("-v", "--verbose", action="store_true", help="show the daemon's log")
    demo.set_defaults(func=cmd_demo)


def _add_convert(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    conv = sub.add_parser("convert-dispatch", help="write a trollpush config from a trollmoves "
                                                   "dispatcher config (docs/migrating.md)")
    conv.add_argument("dispatch", help="the dispatcher's YAML config")
    conv.add_argument("-o", "--output", help="write the config here (default: stdout)")
    conv.add_argument("-p", "--publish-port", type=int, nargs="?", const=0,
                      help="the dispatcher's own -p/--publish-port, if it is run with one")
    conv.add_argument("-n", "--publish-nameserver", nargs="*", metavar="NAMESERVER",
                      help="the dispatcher's own -n/--publish-nameserver")
    conv.set_defaults(func=cmd_convert)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import command

    return command(args)


def _bit_rate(text: str) -> float:
    from .config.units import BIT_UNITS, parse_quantity

    value = parse_quantity(text, BIT_UNITS)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a rate like 1Gbit or 100Mbit")
    return value


def _add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doc = sub.add_parser("doctor", help="check this host, the endpoints and the config's "
                                        "paths and addresses (docs/tuning.md)")
    doc.add_argument("config")
    doc.add_argument("--no-write", action="store_true",
                     help="do not write (and delete) a probe object in each bucket")
    doc.add_argument("--rate", type=_bit_rate, default=1e9,
                     help="the link's rate, to size socket buffers against (default: 1Gbit)")
    doc.add_argument("--timeout", type=float, default=5.0,
                     help="seconds allowed for each network step (default: %(default)s)")
    doc.add_argument("--json", action="store_true",
                     help="a JSON list of {check, subject, status, detail, fix}")
    doc.set_defaults(func=cmd_doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trollpush", description="Land announced files in S3 and announce them.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("config", help="YAML config file")
    run.add_argument("-c", "--log-config", help="YAML logging dictConfig file")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=cmd_run)

    _add_send(sub)
    _add_status(sub)

    check = sub.add_parser("check", help="validate a config and summarise it")
    check.add_argument("config")
    check.set_defaults(func=cmd_check)

    match = sub.add_parser("match", help="dry run: where would this file go?")
    match.add_argument("config")
    match.add_argument("file")
    match.add_argument("--topic", default="/", help="the message subject to assume")
    match.add_argument("--meta", action="append", metavar="KEY=VALUE")
    match.add_argument("-v", "--verbose", action="store_true",
                       help="also show where each field came from (the message, the "
                       "pattern, the file name; aliases) and why the other targets do "
                       "not match")
    match.set_defaults(func=cmd_match)

    schema = sub.add_parser("schema", help="print the config file's JSON Schema "
                                           "(draft 2020-12), for editors")
    schema.set_defaults(func=cmd_schema)

    _add_demo(sub)
    _add_convert(sub)
    _add_doctor(sub)
    return parser


def _add_send(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``trollpush send``: the client's options, the longest list (kept out of
    build_parser so that each stays readable)."""
    from .config.defaults import REQUEST_ADDRESS

    send = sub.add_parser("send", help="submit one file to a running daemon and wait")
    send.add_argument("file")
    send.add_argument("dest", help="s3://BUCKET/KEY or ALIAS/BUCKET/KEY; a trailing / appends "
                                   "the file name")
    send.add_argument("--meta", action="append", metavar="KEY=VALUE",
                      help="metadata to pass on (repeatable)")
    send.add_argument("--endpoint", help="the daemon's endpoint to use (default: the one "
                                         "named `default`, or the only one)")
    send.add_argument("--server", default=REQUEST_ADDRESS,
                      help="the daemon's request address (default: %(default)s)")
    send.add_argument("--timeout", type=float, default=10.0,
                      help="seconds to wait for the daemon to accept the request; exit 2 "
                           "past it (default: %(default)s)")
    send.add_argument("--result-timeout", type=float, default=None,
                      help="seconds to wait for the result once accepted; exit 1 past it "
                           "(default: as long as the daemon works on it)")
    send.add_argument("--no-wait", action="store_true",
                      help="return once the daemon has accepted the request")
    send.add_argument("--overwrite", action="store_true",
                      help="upload even if this file already landed at the destination "
                           "(skips the content and store check)")
    send.add_argument("--json", action="store_true", help="print the reply as JSON")
    send.add_argument("-q", "--quiet", action="store_true",
                      help="print nothing on success, even on a terminal (no progress bar, "
                           "no summary line; errors still go to stderr)")
    send.set_defaults(func=cmd_send)


class _StdoutGuard:
    """``sys.stdout`` while a command runs: a reader that goes away (``| head``) ends the
    output, not the command.

    Without it, the first write or the final flush into the closed pipe raises
    ``BrokenPipeError`` (a traceback, or "Exception ignored" at exit) wherever it happens,
    which in ``demo`` can be between starting the daemon and the code that stops it.
    From then on the output goes to ``/dev/null`` (also for what the interpreter flushes
    at exit) and the command finishes as usual; ``main`` then exits with 141 where it
    would have exited with 0.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self.gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.gone()

    def gone(self) -> None:
        self.reader_gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            return
        try:
            os.dup2(devnull, self.stream.fileno())
        except (OSError, ValueError):  # no file descriptor behind it
            pass
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def main(argv: Sequence[str] | None = None, *, startup: StartupSignals | None = None
         ) -> int:
    """The console script.  When stdout's reader went away (see _StdoutGuard), a command
    that succeeded exits with 141 instead of 0; one that failed keeps its own code."""
    logsafe.install()
    guard = _StdoutGuard(sys.stdout)
    sys.stdout = cast(TextIO, guard)
    try:
        try:
            code = _main(argv, startup)
        except SystemExit as end:  # argparse: --help (0), usage errors (2)
            guard.flush()
            if guard.reader_gone and not end.code:
                return EXIT_STDOUT_CLOSED
            raise
        guard.flush()
    except BrokenPipeError:  # written around the guard (sys.__stdout__, an fd)
        guard.gone()
        return EXIT_STDOUT_CLOSED
    finally:
        sys.stdout = guard.stream
    return EXIT_STDOUT_CLOSED if guard.reader_gone and code == 0 else code


def _main(argv: Sequence[str] | None, startup: StartupSignals | None = None) -> int:
    parser = build_parser()
    args: Any = parser.parse_args(argv)
    if args.command == "run":  # first of all: a stop during start-up is a clean stop
        if startup is None:  # (the console script installs them sooner, see _entry)
            startup = StartupSignals()
            startup.install()
        args.startup = startup
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 1
    except TrollpushError as err:
        print(f"trollpush {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
