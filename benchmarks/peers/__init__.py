"""Peer drivers: the same work through other tools, for comparison.

- ``naive_boto3``: a plain boto3 script, one ``upload_file`` after another.
- ``direct_aiobotocore``: a hand-written aiobotocore loop with trollpush's concurrency
  (no pipeline around it: the ceiling for many small files).
- ``trollmoves_dispatcher``: the trollmoves dispatcher (s3fs mover) fed posttroll
  messages; runs in its own virtualenv (``.venv-peers``).

The two library peers are long-lived worker processes: they build their client once, say
``{"ready": ...}`` on stdout, then take JSON lines on stdin
(``{"op": "upload", "bucket": ..., "items": [[path, key], ...]}``) and answer one JSON line
per file (``{"key", "t", "ok", "error"}``, ``t`` from ``time.monotonic()``, which all
processes on the machine share) and ``{"op": "done"}`` per batch.
"""
