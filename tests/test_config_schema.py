"""The JSON Schema of the config: current, valid, built from the validator's own rules,
and it accepts every example the project ships."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from trollpush.config import EVENT_LOOPS, config_schema, parse_config
from trollpush.config.defaults import SECTIONS, Key, Kind
from trollpush.config.schema import kind_schema
from trollpush.transfer.checksum import ALGORITHMS

from .test_config import BAD_CONFIGS, valid

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "docs" / "config.schema.json"
REGENERATE = "python -m trollpush schema > docs/config.schema.json"
#: mistakes only the validator sees: names across sections, trollsift's own parsing
SEMANTIC = {"target-endpoint-unknown", "duplicate-target-name", "destination-bad-template",
            "bad-pattern", "pattern-field-twice",
            # object options: a file's content, a sum over entries, a merge, a case fold
            "key-file-missing", "metadata-over-2kib", "metadata-bad-template",
            "tags-over-ten-once-merged", "metadata-keys-equal-but-case",
            "target-metadata-key-equal-but-case", "tag-value-too-long"}


def errors(schema: dict[str, Any], data: object) -> list[str]:
    found = jsonschema.Draft202012Validator(schema).iter_errors(data)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def test_schema_file_is_current() -> None:
    """docs/config.schema.json is what `trollpush schema` prints today."""
    expected = json.dumps(config_schema(), indent=2) + "\n"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == expected, (
        f"{SCHEMA_FILE.relative_to(ROOT)} is stale: regenerate it with `{REGENERATE}`")


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(config_schema())
    assert config_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_command_prints_the_schema(tmp_path: Path) -> None:
    """`trollpush schema` prints the schema as JSON, and nothing else."""
    proc = subprocess.run([sys.executable, "-m", "trollpush", "schema"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == config_schema()
    assert proc.stderr == ""


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "examples").glob("*.yaml")
                                         if p.name != "logging.yaml"),  # a -c log config
                         ids=lambda p: p.name)
def test_shipped_example_configs_match_the_schema(path: Path) -> None:
    """examples/*.yaml but logging.yaml (test_service_unit.py runs that one; demo.yaml is
    also the config `trollpush demo` runs)."""
    assert errors(config_schema(), yaml.safe_load(path.read_text(encoding="utf-8"))) == []


def yaml_blocks() -> list[Any]:
    blocks = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = md.read_text(encoding="utf-8")
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S)):
            if block.startswith("# a broken config"):  # an example of what check reports
                continue
            data = yaml.safe_load(block)
            if isinstance(data, dict) and set(data) & set(SECTIONS):
                blocks.append(pytest.param(data, id=f"{md.name}-{i}"))
    return blocks


@pytest.mark.parametrize("data", yaml_blocks())
def test_config_snippets_in_the_docs_match_the_schema(data: dict[str, Any]) -> None:
    """Each section of each YAML example in README.md and docs/ is valid on its own."""
    schema = config_schema()
    for section, value in data.items():
        assert section in schema["properties"], f"no section {section!r}"
        assert errors(schema["properties"][section], value) == [], section


def test_the_test_suites_complete_config_matches_the_schema() -> None:
    assert errors(config_schema(), valid()) == []


@pytest.mark.parametrize(("data", "key", "shown"), [
    p for p in BAD_CONFIGS if p.id not in SEMANTIC])
def test_schema_refuses_the_mistakes_it_can_express(data: object, key: str, shown: str) -> None:
    """Every class of config error in test_config, except those only the validator can
    see (SEMANTIC), is also an error for an editor using the schema."""
    assert errors(config_schema(), data), f"the schema accepts a config with a bad {key}"


def test_schema_takes_choices_and_defaults_from_the_code() -> None:
    """Enums are the code's own tuples; defaults are the dataclasses' defaults."""
    props = config_schema()["properties"]
    endpoint = props["endpoints"]["additionalProperties"]["properties"]
    assert endpoint["checksum"]["enum"] == list(ALGORITHMS)
    assert props["daemon"]["properties"]["event_loop"]["enum"] == list(EVENT_LOOPS)
    assert endpoint["multipart_chunksize"]["default"] == 16 * 1024 * 1024
    assert props["targets"]["items"]["required"] == ["destination"]


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_of_key_has_a_schema(kind: Kind) -> None:
    assert kind_schema(Key(kind, "doc", choices=("a",)))


def test_tags_of_letters_beyond_ascii_are_taken_by_the_schema_as_by_the_validator() -> None:
    """ECMA-262's ``\\w`` is ASCII only (an editor's JSON Schema engine): the schema lets
    every character beyond ASCII through, so a tag the validator takes is never refused."""
    data = {"requests": {}, "endpoints": {"default": {"object": {
        "tags": {"höhe": "Göteborg {platform_name}", "Plats": "Norrköping"}}}}}
    parse_config(data)
    assert errors(config_schema(), data) == []
