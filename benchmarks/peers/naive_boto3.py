"""Peer: a naive boto3 script. One client, ``upload_file`` for each file, one after another.

boto3's defaults are kept on purpose (``Expect: 100-continue``, botocore retries,
multipart above 8 MiB with 10 threads): this is what a quick script does.
"""

from __future__ import annotations

import argparse
import sys

import boto3
from botocore.config import Config

from benchmarks.peers._worker import emit, parse, ready, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.naive_boto3")
    parser.add_argument("--url", required=True, help="S3 endpoint URL")
    args = parser.parse_args(argv)
    client = boto3.client("s3", endpoint_url=args.url,
                          config=Config(s3={"addressing_style": "path"}))
    ready(tool="naive-boto3", boto3=boto3.__version__)
    for line in sys.stdin:
        request = parse(line)
        if request is None:
            break
        for path, key in request["items"]:
            try:
                client.upload_file(path, request["bucket"], key)
            except Exception as err:  # report every failure, keep going
                result(key, ok=False, error=f"{type(err).__name__}: {err}")
            else:
                result(key, ok=True)
        emit(op="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
