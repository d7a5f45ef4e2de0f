"""The benchmark report's P5 arithmetic and wording, from made-up raw results (no
benchmark is run here: speed is measured by ``make bench`` only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import report


def _run(n: int, run: int, elapsed: float, cpu: list[float], files: list[int]) -> dict[str, Any]:
    ok = sum(files)
    return {"tool": "trollpush", "run": run, "instances": n, "files": ok, "ok": ok,
            "failed": 0, "missing": 0, "elapsed": elapsed, "latencies_ms": [1.0, 2.0],
            "errors": [], "verify": {"objects": ok, "expected": ok, "wrong_or_missing": 0},
            "stream": {"messages": 0, "ack_pending": 0, "redelivered": 0},
            "cpu_s": {"nats": 0.1, "store": 0.5, "driver": 0.2, "machine": 1.9 * elapsed,
                      **{f"trollpush-{i + 1}": c for i, c in enumerate(cpu)}},
            "per_instance": [{"name": f"trollpush-{i + 1}", "files": f, "cpu_s": c}
                             for i, (f, c) in enumerate(zip(files, cpu, strict=True))]}


def _meta() -> dict[str, Any]:
    return {"date": "2026-12-01 06:00 UTC",
            "machine": {"nproc": 2, "cpu": "x", "ram_gib": 1, "kernel": "6", "python": "3.13"},
            "versions": dict.fromkeys(("trollpush", "aiobotocore", "botocore", "aiohttp",
                                       "boto3", "posttroll", "pyzmq"), "1"),
            "settings": {"quick": False, "runs": 2, "idle": 60, "rtt_ms": 200,
                         "rate_mbit": 100, "tools": ["trollpush"], "p1_files": 20,
                         "p1_size": 1, "p2_size": 1, "p3_files": 1000, "p3_size": 4096,
                         "p4_size": 1, "tp_endpoint": {}}}


def test_p5_table_gives_rate_ratio_and_cpu_per_file(tmp_path: Path) -> None:
    runs = [
        _run(1, 1, 4.0, [3.0], [1000]), _run(1, 2, 5.0, [3.2], [1000]),
        _run(2, 1, 2.5, [1.6, 1.6], [500, 500]), _run(2, 2, 2.5, [1.2, 2.0], [400, 600]),
        {"tool": "trollpush", "run": 3, "instances": 2, "error": "boom"}]
    results = {"P5": {"net": "loopback", "server": "seaweedfs", "runs": runs}}
    a = report.Analysis(_meta(), results)
    one, two = a.p5(1), a.p5(2)
    assert one["rate"] == 225.0  # median of 250 and 200 files/s
    assert two["rate"] == 400.0 and two["ratio"] == 400.0 / 225.0
    assert one["instance"] == pytest.approx(3.1e-3)  # median of 3.0 and 3.2 ms
    # each instance over the files it did (3.0 and 3.33 ms), their mean; then the median
    assert two["instance"] == pytest.approx((3.2e-3 + (3.0e-3 + 2.0 / 600) / 2) / 2)
    assert one["cores"] == pytest.approx(((3.0 + 0.8) / 4.0 + (3.2 + 0.8) / 5.0) / 2)
    out = tmp_path / "bench.md"
    report.write(_meta(), results, out, tmp_path / "bench.png")
    text = out.read_text()
    assert ("| 2 | 400 | 1.78x | 3.18 ms | 3.20 ms | 0.10 ms | 0.50 ms | 0.20 ms | 4.00 ms "
            "| 1.60 of 2 (machine: 1.90) | 500/500; 400/600 | 400, 400, error |") in text
    assert "On this 2-core machine the gain is bounded by CPU" in text
    assert "about 323/s at N = 1's 3.10 ms" in text
    assert "N=1: 225/s; N=2: 400/s (1.78x)" in text
    assert "N = 2 run 3: boom" in text
    progress = report.p5_line(runs[2])
    assert progress.startswith("N=2: 2.50 s, 1000/1000 ok") and "files per instance 500/500" \
        in progress
