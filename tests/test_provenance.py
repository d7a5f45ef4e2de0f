"""Where each field of a routed file came from: the message, the pattern, the file name,
and what the target's aliases turn it into (``trollpush match -v``)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import yaml

from trollpush.route import Field, provenance

from .test_route import PATTERN, make_config, make_request

TARGET = {"name": "viirs", "pattern": PATTERN,
          "aliases": {"platform_name": {"NOAA-20": "noaa20"}},
          "destination": "s3://archive/{platform_name}/{sensor}/{start_time:%Y}/{uid}"}
NAME = "J01_20261121_1005_12345.h5"


def test_each_field_says_where_it_came_from() -> None:
    config = make_config(TARGET)
    request = make_request({"uri": f"/data/{NAME}", "uid": NAME,
                            "platform_name": "NOAA-20", "sensor": ["viirs"]})
    fields = {f.name: f for f in provenance(config.targets[0], request, request.files[0])}
    assert fields["platform_name"] == Field("platform_name", "NOAA-20", "message",
                                            overruled=("J01",), aliased=("noaa20",))
    assert fields["sensor"] == Field("sensor", ["viirs"], "message")
    assert fields["orbit"] == Field("orbit", 12345, "pattern")
    assert fields["start_time"] == Field("start_time", dt.datetime(2026, 11, 21, 10, 5),
                                         "pattern")
    assert fields["uid"].value == NAME


def test_a_pattern_field_the_message_lacks_is_aliased_too() -> None:
    config = make_config({**TARGET, "aliases": {"platform_name": {"J01": "noaa20"}}})
    request = make_request({"uri": f"/data/{NAME}", "sensor": "viirs"})
    fields = {f.name: f for f in provenance(config.targets[0], request, request.files[0])}
    assert fields["platform_name"] == Field("platform_name", "J01", "pattern",
                                            aliased=("noaa20",))
    assert fields["sensor"].overruled == ()


def test_match_verbose_prints_the_provenance(tmp_path: Path) -> None:
    cfg = tmp_path / "trollpush.yaml"
    cfg.write_text(yaml.safe_dump({"requests": None, "endpoints": {"default": {}},
                                   "targets": [TARGET]}))
    out = subprocess.run([sys.executable, "-m", "trollpush", "match", str(cfg),
                          str(tmp_path / NAME), "--meta", "platform_name=NOAA-20",
                          "--meta", "sensor=viirs", "-v"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"viirs: s3://archive/noaa20/viirs/2026/{NAME}")
    assert ("    platform_name = 'NOAA-20'  from the message; the pattern read 'J01'; "
            "composes as 'noaa20' (alias)") in lines
    assert "    orbit = 12345  from the pattern" in lines
    assert f"    uid = '{NAME}'  from the file name" in lines
