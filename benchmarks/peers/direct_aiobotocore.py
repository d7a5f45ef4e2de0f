"""Peer: a direct aiobotocore loop, the ceiling for many small files.

No pipeline around the uploads: one warm client, ``put_object`` for every file behind a
semaphore of the same size as trollpush's pool, ``Expect: 100-continue`` removed, no
botocore retries (up to three tries of its own), a long keep-alive so the pool stays open
through idle periods; on the same event loop as trollpush's default (uvloop), so that the
ratio measures the pipeline around the uploads, not the loop under them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import aiobotocore
import uvloop
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.handlers import add_expect_header

from benchmarks.peers._worker import emit, parse, ready, result

TRIES = 3  # a store's occasional 500 must not void the ceiling


async def put(client: Any, slots: asyncio.Semaphore, bucket: str, path: str,
              key: str) -> None:
    async with slots:
        for attempt in range(1, TRIES + 1):
            try:
                body = await asyncio.to_thread(open, path, "rb")
                try:
                    size = os.fstat(body.fileno()).st_size
                    await client.put_object(Bucket=bucket, Key=key, Body=body,
                                            ContentLength=size)
                finally:
                    body.close()
            except Exception as err:  # report every failure, keep going
                if attempt < TRIES:
                    continue
                result(key, ok=False, error=f"{type(err).__name__}: {err}")
            else:
                result(key, ok=True)
            return


async def serve(url: str, concurrency: int) -> None:
    config = AioConfig(max_pool_connections=concurrency, retries={"total_max_attempts": 1},
                       s3={"addressing_style": "path"}, read_timeout=600,
                       request_checksum_calculation="when_required",
                       response_checksum_validation="when_required",
                       connector_args={"keepalive_timeout": 3600})
    loop = asyncio.get_running_loop()
    async with AioSession().create_client("s3", endpoint_url=url, config=config) as client:
        client.meta.events.unregister("before-call.s3", add_expect_header)
        slots = asyncio.Semaphore(concurrency)
        ready(tool="direct-aiobotocore", aiobotocore=aiobotocore.__version__,
              concurrency=concurrency, event_loop=f"uvloop {uvloop.__version__}")
        while True:
            request = parse(await loop.run_in_executor(None, sys.stdin.readline))
            if request is None:
                break
            await asyncio.gather(*(put(client, slots, request["bucket"], path, key)
                                   for path, key in request["items"]))
            emit(op="done")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.direct_aiobotocore")
    parser.add_argument("--url", required=True, help="S3 endpoint URL")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.url, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
