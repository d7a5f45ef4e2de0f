"""Conditions side by side with trollmoves' dispatcher: the same condition sets and the
same messages go to ``trollmoves.dispatcher.check_conditions`` and to trollpush's Router,
and both must take or skip each message alike.

The condition sets are the dispatcher's own examples, copied verbatim from trollmoves
(commit d059027: ``examples/dispatch.yaml`` and ``trollmoves/tests/test_dispatcher.py``),
so a dispatcher's ``conditions`` block can be pasted into a target.  Where trollmoves
raises or depends on the order of keys, trollpush does something else on purpose; those
cases are kept out of the shared table and pinned below it (docs/config.md, "Where
trollpush differs from the dispatcher").
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from posttroll.message import Message
from trollmoves.dispatcher import check_conditions

from trollpush import stats
from trollpush.config import Comparison, ConditionSet, Config, parse_config
from trollpush.errors import ConfigError, Reason
from trollpush.messages import build_request
from trollpush.route import Router, RouteResult

from .test_flow import FakeEngine, accepted, pipeline

SUBJECT = "/level2/viirs"

#: examples/dispatch.yaml, target1, first dispatch config
PRODUCTS = yaml.safe_load("""
- product: [green_snow, true_color]
  sensor: viirs
- product: [green_snow, overview]
  sensor: avhrr
  # special section "except" for negating
  except:
    platform_name: NOAA-15
""")
#: trollmoves' test fixture check_conditions_string_config: an except with two keys
PRODUCTS_EXCEPT_TWO = yaml.safe_load("""
- product: [green_snow, true_color]
  sensor: viirs
- product: [green_snow, overview]
  sensor: avhrr
  except:
    platform_name: NOAA-15
    product: [green_snow, cloudtop]
""")
#: examples/dispatch.yaml, target1, second dispatch config: numeric comparisons
CLOUDTYPE = yaml.safe_load("""
- area: omerc_bb
  daylight: '<30'
  coverage: '>50'
""")
#: examples/dispatch.yaml, target-s3-example1: a list inside the list
ATMS = yaml.safe_load("""
- sensor: [atms, [atms]]
  format: SDR
  variant: DR
""")


def comparison(text: str) -> list[dict[str, Any]]:
    return [{"daylight": text}]


#: (condition sets, message metadata, what both decide); ids say what each row pins
SHARED = [
    # two sets ORed, an except in the second
    pytest.param(PRODUCTS, {"sensor": "viirs", "product": "green_snow",
                            "platform_name": "NOAA-20"}, True, id="first-set"),
    pytest.param(PRODUCTS, {"sensor": "viirs", "product": "true_color"}, True,
                 id="first-set-needs-no-platform"),
    pytest.param(PRODUCTS, {"sensor": "viirs", "product": "overview",
                            "platform_name": "NOAA-20"}, False, id="product-not-listed"),
    pytest.param(PRODUCTS, {"sensor": "avhrr", "product": "overview",
                            "platform_name": "NOAA-19"}, True, id="second-set"),
    pytest.param(PRODUCTS, {"sensor": "avhrr", "product": "green_snow",
                            "platform_name": "NOAA-15"}, False, id="excepted"),
    pytest.param(PRODUCTS, {"sensor": "avhrr", "product": "overview"}, False,
                 id="except-key-missing"),
    pytest.param(PRODUCTS, {"sensor": "modis", "product": "true_color",
                            "platform_name": "EOS-Aqua"}, False, id="no-set"),
    pytest.param(PRODUCTS, {"sensor": "viirs"}, False, id="condition-key-missing"),
    # trollmoves' own test_check_conditions_strings* messages
    pytest.param(PRODUCTS_EXCEPT_TWO, {"sensor": "viirs", "product": "green_snow",
                                       "platform_name": "NOAA-20"}, True, id="tm-strings-1"),
    pytest.param(PRODUCTS_EXCEPT_TWO, {"sensor": "viirs", "product": "overview",
                                       "platform_name": "NOAA-20"}, False, id="tm-strings-2"),
    pytest.param(PRODUCTS_EXCEPT_TWO, {"sensor": "avhrr", "product": "overview",
                                       "platform_name": "NOAA-19"}, True, id="tm-strings-3"),
    pytest.param(PRODUCTS_EXCEPT_TWO, {"sensor": "avhrr", "product": "green_snow",
                                       "platform_name": "NOAA-15"}, False, id="tm-negation-1"),
    pytest.param(PRODUCTS_EXCEPT_TWO, {"sensor": "avhrr", "product": "overview",
                                       "platform_name": "NOAA-15"}, True, id="tm-negation-2"),
    pytest.param(PRODUCTS_EXCEPT_TWO, {"product": "overview", "platform_name": "NOAA-19"},
                 False, id="tm-missing-1"),
    pytest.param(PRODUCTS_EXCEPT_TWO, {"sensor": "avhrr", "product": "green_snow"},
                 False, id="tm-missing-2"),
    # numeric comparisons: trollmoves' test_check_conditions_numbers, then the '<30' case
    pytest.param(CLOUDTYPE, {"daylight": 18.3, "area": "omerc_bb", "coverage": "77.1"},
                 True, id="tm-numbers-1"),
    pytest.param(CLOUDTYPE, {"daylight": 48.3, "area": "omerc_bb", "coverage": "77.1"},
                 False, id="tm-numbers-2"),
    pytest.param(CLOUDTYPE, {"daylight": 18.3, "area": "omerc_bb", "coverage": "27.1"},
                 False, id="tm-numbers-3"),
    pytest.param(CLOUDTYPE, {"daylight": 25, "area": "omerc_bb", "coverage": 60}, True,
                 id="daylight-25"),
    pytest.param(CLOUDTYPE, {"daylight": 45, "area": "omerc_bb", "coverage": 60}, False,
                 id="daylight-45"),
    pytest.param(CLOUDTYPE, {"area": "omerc_bb", "coverage": 60}, False,
                 id="daylight-missing"),
    pytest.param(CLOUDTYPE, {"daylight": 30, "area": "omerc_bb", "coverage": 60}, False,
                 id="daylight-30-strict"),
    pytest.param(CLOUDTYPE, {"daylight": "25", "area": "omerc_bb", "coverage": "60"}, True,
                 id="numeric-strings"),
    pytest.param(CLOUDTYPE, {"daylight": " 25 ", "area": "omerc_bb", "coverage": 60}, True,
                 id="numeric-string-blanks"),
    pytest.param(CLOUDTYPE, {"daylight": 25, "area": "euron1", "coverage": 60}, False,
                 id="area-differs"),
    pytest.param(CLOUDTYPE, {"daylight": 25, "area": "omerc_bb", "coverage": 50}, False,
                 id="coverage-50-strict"),
    # every operator, blanks after it, signs and exponents
    *[pytest.param(comparison(text), {"daylight": value}, expected,
                   id=f"{text.strip()}-{value}")
      for text, value, expected in [
          (">=5", 5, True), (">=5", 4.99, False), ("<=5", 5, True), ("<=5", 6, False),
          ("!=3", 3, False), ("!=3", 3.5, True), ("==2", 2, True), ("==2", 2.0, True),
          ("==2", "2", True), ("==2", 3, False), ("< 30", 25, True), ("<30 ", 31, False),
          (">= 5", 7, True), ("<-5", -6, True), ("<-5", -5, False), ("<2.5e1", 24, True),
          ("<2.5e1", 25, False), (">.5", 0.6, True), ("<+10", 9, True), ("<1.", 0, True),
          (">0", -0.0, False), ("<30", 2**60, False),
      ]],
    # a list inside the list: the field equals it as a whole
    pytest.param(ATMS, {"sensor": "atms", "format": "SDR", "variant": "DR"}, True,
                 id="atms-plain"),
    pytest.param(ATMS, {"sensor": ["atms"], "format": "SDR", "variant": "DR"}, True,
                 id="atms-as-list"),
    pytest.param(ATMS, {"sensor": "atms", "format": "SDR", "variant": "CSPP"}, False,
                 id="atms-other-variant"),
    pytest.param(ATMS, {"sensor": ["mhs"], "format": "SDR", "variant": "DR"}, False,
                 id="atms-other-list"),
    pytest.param(ATMS, {"sensor": "atms", "variant": "DR"}, False, id="atms-no-format"),
    # plain values: numbers, booleans, a one-set list
    pytest.param([{"orbit": 12345}], {"orbit": 12345}, True, id="number"),
    pytest.param([{"orbit": 12345}], {"orbit": 12346}, False, id="other-number"),
    pytest.param([{"orbit": 5}], {"orbit": 5.0}, True, id="int-equals-float"),
    pytest.param([{"night": True}], {"night": True}, True, id="boolean"),
    pytest.param([{"night": True}], {"night": False}, False, id="other-boolean"),
    pytest.param([{"except": {"quality": "bad"}}], {"quality": "good"}, True,
                 id="only-except-not-excepted"),
    pytest.param([{"except": {"quality": "bad"}}], {"quality": "bad"}, False,
                 id="only-except-excepted"),
    pytest.param([{"except": {"daylight": ">80"}}], {"daylight": 90}, False,
                 id="comparison-in-except-excepts"),
    pytest.param([{"except": {"daylight": ">80"}}], {"daylight": 10}, True,
                 id="comparison-in-except-passes"),
]


def target_config(conditions: object) -> Config:
    return parse_config({"requests": None, "endpoints": {"default": {}},
                         "targets": [{"name": "t", "topics": ["/level2/"],
                                      "destination": "s3://b/{uid}",
                                      "conditions": conditions}]})


def trollpush_route(conditions: object, meta: dict[str, Any]) -> RouteResult:
    data = {"uri": "/data/in/granule.tif", **meta}
    request = build_request(Message(SUBJECT, "file", data), origin="subscribe", check=False)
    return Router(target_config(conditions)).route(request)


def trollmoves_takes(conditions: object, meta: dict[str, Any]) -> bool:
    msg = Message(SUBJECT, "file", {"uri": "/data/in/granule.tif", **meta})
    return bool(check_conditions(msg, {"topics": ["/level2/"], "conditions": conditions}))


@pytest.mark.parametrize(("conditions", "meta", "expected"), SHARED)
def test_same_decision_as_the_dispatcher(conditions: list[dict[str, Any]],
                                         meta: dict[str, Any], expected: bool) -> None:
    """The dispatcher and trollpush take or skip the same messages; the dispatcher's
    block is used verbatim."""
    assert trollmoves_takes(conditions, meta) is expected
    result = trollpush_route(conditions, meta)
    assert bool(result.jobs) is expected, result.skipped


@pytest.mark.parametrize(("conditions", "meta", "expected"),
                         [p for p in SHARED if len(cast(list[Any], p.values[0])) == 1])
def test_a_mapping_is_a_list_of_one_set(conditions: list[dict[str, Any]],
                                        meta: dict[str, Any], expected: bool) -> None:
    """The mapping form (trollpush's first) decides as the one-set list does."""
    assert bool(trollpush_route(conditions[0], meta).jobs) is expected


def test_comparisons_are_parsed_once_at_load() -> None:
    """'<30' becomes a typed comparison in the loaded config; the message never re-reads
    the text."""
    [one] = target_config(CLOUDTYPE).targets[0].conditions
    assert one == ConditionSet({"area": ("omerc_bb",), "daylight": Comparison("<", 30, "<30"),
                                "coverage": Comparison(">", 50, ">50")}, {})
    [one] = target_config(comparison(">= -2.5e1 ")).targets[0].conditions
    assert one.conditions["daylight"] == Comparison(">=", -25.0, ">= -2.5e1 ")


def test_skip_reasons_name_the_set_and_the_value() -> None:
    """Why no set took a file: each set's first failing condition, by its index."""
    result = trollpush_route(PRODUCTS, {"sensor": "avhrr", "product": "green_snow",
                                        "platform_name": "NOAA-15"})
    assert result.skipped["t"] == (
        "no condition set holds: conditions[0]: condition sensor in ['viirs']: got 'avhrr'; "
        "conditions[1]: excepted by platform_name in ['NOAA-15']")
    result = trollpush_route(CLOUDTYPE, {"daylight": 45, "area": "omerc_bb", "coverage": 60})
    assert result.skipped["t"] == "condition daylight '<30': got 45"
    result = trollpush_route(CLOUDTYPE, {"daylight": "abc", "area": "omerc_bb",
                                         "coverage": 60})
    assert result.skipped["t"] == "condition daylight '<30': got 'abc', not a number"


def test_the_set_that_took_a_file_is_named() -> None:
    """With several sets, the route result names the one that held (for match)."""
    result = trollpush_route(PRODUCTS, {"sensor": "avhrr", "product": "overview",
                                        "platform_name": "NOAA-19"})
    assert result.held == {"t": "conditions[1]"}
    assert trollpush_route(CLOUDTYPE, {"daylight": 1, "area": "omerc_bb",
                                       "coverage": 99}).held == {}


# --- where trollpush differs from the dispatcher, on purpose ----------------------------

NOT_A_NUMBER = [
    pytest.param("abc", id="text"),
    pytest.param(dt.datetime(2026, 11, 21), id="datetime"),
    pytest.param([25], id="list"),
    pytest.param(None, id="none"),
    pytest.param("nan", id="nan-text"),
    pytest.param(float("inf"), id="infinite"),
]


@pytest.mark.parametrize("value", NOT_A_NUMBER)
def test_a_comparison_on_a_value_that_is_not_a_number_skips_the_file(value: object) -> None:
    """The dispatcher raises (float() or its eval fails, and the exception ends its run);
    trollpush fails the set, so the file is skipped, never uploaded."""
    meta = {"daylight": value, "area": "omerc_bb", "coverage": 60}
    with pytest.raises((ValueError, TypeError, NameError)):
        trollmoves_takes(CLOUDTYPE, meta)
    result = trollpush_route(CLOUDTYPE, meta)
    assert result.jobs == ()
    assert "not a number" in result.skipped["t"]


def test_a_comparison_on_a_boolean_skips_the_file() -> None:
    """The dispatcher reads True as 1.0; trollpush does not take a boolean for a number."""
    meta = {"daylight": True, "area": "omerc_bb", "coverage": 60}
    assert trollmoves_takes(CLOUDTYPE, meta) is True
    assert trollpush_route(CLOUDTYPE, meta).jobs == ()


def test_an_except_key_missing_fails_the_set_whatever_the_order() -> None:
    """The dispatcher stops at the first except key that does not match, so a missing key
    after it goes unnoticed and the file is taken; before it, the set fails.  trollpush
    fails the set whenever an except key is missing: whether the file is excepted cannot
    be told."""
    sets = yaml.safe_load("""
- sensor: avhrr
  except:
    platform_name: NOAA-15
    quality: bad
""")
    unknown = {"sensor": "avhrr", "platform_name": "NOAA-19"}
    assert trollmoves_takes(sets, unknown) is True
    assert trollpush_route(sets, unknown).jobs == ()
    same = {"sensor": "avhrr", "platform_name": "NOAA-15"}  # both fail the set
    assert trollmoves_takes(sets, same) is False
    assert trollpush_route(sets, same).jobs == ()


@pytest.mark.parametrize(("conditions", "meta"), [
    pytest.param([{"sensor": "viirs"}], {"sensor": ["viirs"]}, id="list-field"),
    pytest.param(ATMS, {"sensor": ["atms", "mhs"], "format": "SDR", "variant": "DR"},
                 id="list-field-with-more"),
    pytest.param([{"orbit": 12345}], {"orbit": "12345"}, id="number-as-text"),
    pytest.param([{"orbit": "12345"}], {"orbit": 12345}, id="text-as-number"),
])
def test_trollpush_matches_lists_and_text_forms_where_the_dispatcher_does_not(
        conditions: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """trollpush's own rules, kept from before: a list-valued field (trollstalker sends
    sensor: [viirs]) matches when any element does, and values equal by their text
    (a number parsed from a file name matches the same number written as text)."""
    assert trollmoves_takes(conditions, meta) is False
    assert trollpush_route(conditions, meta).jobs


@pytest.mark.parametrize(("conditions", "trollmoves_does"), [
    pytest.param([{"daylight": "<abc"}], NameError, id="not-a-number"),
    pytest.param([{"daylight": "=30"}], SyntaxError, id="single-equals"),
    pytest.param([{"daylight": "<"}], SyntaxError, id="operator-alone"),
    pytest.param([{"daylight": "<30<40"}], True, id="chained"),
    pytest.param([{"daylight": " <30"}], False, id="blank-first-is-text"),
    pytest.param([{"daylight": ["<30", ">80"]}], False, id="in-a-list-is-text"),
    pytest.param([], False, id="no-sets-takes-nothing"),
    pytest.param([{}], True, id="empty-set-takes-everything"),
    pytest.param([{"except": {}}], False, id="empty-except-excepts-everything"),
])
def test_check_refuses_what_the_dispatcher_would_read_surprisingly(
        conditions: list[dict[str, Any]], trollmoves_does: object) -> None:
    """Each of these is a config error in trollpush: the dispatcher raises on the first
    three at the first message, and reads the rest in a way nobody would mean."""
    meta = {"daylight": 25}
    if isinstance(trollmoves_does, type):
        with pytest.raises(trollmoves_does):
            trollmoves_takes(conditions, meta)
    else:
        assert trollmoves_takes(conditions, meta) is trollmoves_does
    with pytest.raises(ConfigError) as info:
        target_config(conditions)
    assert "targets[0].conditions" in str(info.value)


# --- a skipped file is not uploaded -----------------------------------------------------


@pytest.mark.parametrize(("daylight", "uploaded"), [
    (25, True), (45, False), (None, False), ("abc", False)])
async def test_a_file_the_condition_skips_is_not_uploaded(daylight: object,
                                                          uploaded: bool) -> None:
    """Through the pipeline with a scripted engine: daylight '<30' uploads the file at 25
    and never at 45, without daylight, or with text; those end as a no_route failure."""
    cfg = parse_config({"requests": None, "endpoints": {"main": {}}, "targets": [
        {"name": "cloudtype", "topics": ["/level3/"], "destination": "s3://l3/{uid}",
         "conditions": CLOUDTYPE}]})
    data: dict[str, Any] = {"uri": "/data/ct.nc", "area": "omerc_bb", "coverage": 77.1}
    if daylight is not None:
        data["daylight"] = daylight
    engine = FakeEngine()
    p, announcer = pipeline(cfg, engine)
    r = await accepted(p, build_request(Message("/level3/cloudtype", "file", data),
                                        origin="subscribe", check=False))
    await p.run(r)
    if uploaded:
        assert [urls for _, urls, _ in engine.calls] == [["s3://l3/ct.nc"]]
        assert [m.type for m in announcer.out] == ["file"]
    else:
        assert engine.calls == []
        assert [(m.type, m.data["reason"]) for m in announcer.out] == [
            ("failure", Reason.NO_ROUTE)]
        assert p.stats.count(stats.REQUESTS, outcome="failed") == 1


# --- trollpush match and check ----------------------------------------------------------


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "trollpush.yaml"
    path.write_text(yaml.safe_dump({
        "requests": None, "endpoints": {"default": {}},
        "targets": [{"name": "products", "topics": ["/level2/"], "destination": "s3://l2/{uid}",
                     "conditions": PRODUCTS},
                    {"name": "cloudtype", "topics": ["/level3/"],
                     "destination": "s3://l3/{uid}", "conditions": CLOUDTYPE}]}),
        encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "trollpush", *args[:1], str(path), *args[1:]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)


def test_match_names_the_set_that_took_the_file(tmp_path: Path) -> None:
    proc = run(tmp_path, "match", "/data/x.tif", "--topic", "/level2/avhrr",
               "--meta", "sensor=avhrr", "--meta", "product=overview",
               "--meta", "platform_name=NOAA-19")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "products: s3://l2/x.tif (endpoint default, announce on /trollpush/uploaded/, " \
           "by conditions[1])" in proc.stdout


def test_match_says_why_no_set_took_the_file(tmp_path: Path) -> None:
    proc = run(tmp_path, "match", "/data/ct.nc", "--topic", "/level3/cloudtype",
               "--meta", "area=omerc_bb", "--meta", "daylight=45", "--meta", "coverage=77.1")
    assert proc.returncode == 1
    assert "cloudtype: no match: condition daylight '<30': got 45" in proc.stdout
    proc = run(tmp_path, "match", "/data/x.tif", "--topic", "/level2/avhrr",
               "--meta", "sensor=avhrr", "--meta", "product=green_snow",
               "--meta", "platform_name=NOAA-15")
    assert proc.returncode == 1
    assert ("products: no match: no condition set holds: conditions[0]: condition sensor "
            "in ['viirs']: got 'avhrr'; conditions[1]: excepted by ") in proc.stdout


def test_check_shows_the_condition_sets(tmp_path: Path) -> None:
    proc = run(tmp_path, "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("target products: -> s3://l2/{uid} @default (topics ['/level2/']; any of 2 "
            "condition sets: 2 condition(s), 0 except | 2 condition(s), 1 except)") in proc.stdout
    assert "target cloudtype: -> s3://l3/{uid} @default (topics ['/level3/']; 3 condition(s), " \
           "0 except)" in proc.stdout
