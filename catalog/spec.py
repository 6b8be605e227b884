"""The spec loader shared by `emoforge curate` and `emoforge train`: TOML, `--set` overrides, the
[select] section, frozen dataclasses from tables; errors name the valid keys.

A spec is a TOML file of sections. `--set section.key=value` overrides a key; dotted keys reach
nested tables (`--set select.lip_sync_rules.av_corr.min_confidence=0.7`,
`--set analyze.audio.transcribe=false`), and the value is read as TOML (a bare word is a string).
[select] (catalog.Thresholds) is common to both commands and merged rule by rule onto the
defaults. A section of the other command's specs is an error that names that command.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from catalog.select import SelectionError, Thresholds, thresholds_with

# Every command's sections, in the order `--help` and errors list them. The curate stage
# sections are the runner's stage names (pipeline.stages.registry.STAGE_CLASSES).
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "curate": ("job", "runner", "storage", "select", "ingest", "scenes", "faces", "analyze"),
    "train": ("train", "model", "data", "select", "optim", "diffusion", "dropout"),
}


class SpecError(ValueError):
    """A spec or override that cannot be used; the message lists what is valid."""


def read_toml(path: str | Path) -> dict:
    """The TOML file at `path` as a dict; a missing or malformed file is a SpecError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"spec {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"spec {path} is not valid TOML: {exc}") from None


def check_sections(sections: Iterable[str], command: str) -> None:
    """SpecError unless every section belongs to `command`'s specs (COMMAND_SECTIONS); a section
    of another command's specs says which command takes it."""
    valid = COMMAND_SECTIONS[command]
    unknown = sorted(set(sections) - set(valid))
    if not unknown:
        return
    elsewhere = [f"[{s}] belongs to `emoforge {c}` specs" for s in unknown
                 for c, names in COMMAND_SECTIONS.items() if c != command and s in names]
    where = f" ({'; '.join(elsewhere)})" if elsewhere else ""
    raise SpecError(f"unknown sections {unknown} for `emoforge {command}`{where}; "
                    f"valid: {', '.join(valid)}")


def with_overrides(data: dict, overrides: Iterable[str], command: str) -> dict:
    """A copy of the TOML-shaped `data` with each `section.key[.key...]=value` applied (the value
    read as TOML); `data` itself is left as read. Sections are checked (check_sections)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        section, dot, key = dotted.strip().partition(".")
        if not sep or not dot or not key:
            raise SpecError(f"override {item!r} is not section.key=value")
        check_sections([section], command)
        node = data.setdefault(section, {})
        *parents, last = key.split(".")
        for part in parents:
            if node.get(part) is not None and not isinstance(node[part], dict):
                raise SpecError(f"override {item!r}: {section}.{part} is a value, not a table")
            node[part] = dict(node.get(part) or {})  # a copy: the loaded TOML stays as read
            node = node[part]
        node[last] = parse_value(raw)
    check_sections(data, command)
    return data


def parse_value(raw: str) -> Any:
    """An override's value as TOML (`0.7`, `true`, `["a", "b"]`, `"text"`); else the raw text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def select_from(values: dict, base: Thresholds | None = None) -> Thresholds:
    """[select] as catalog.Thresholds: `values` merged onto `base` (default: the defaults) rule
    by rule, so `lip_sync_rules.av_corr.min_confidence` keeps av_corr's other keys and the
    other rules."""
    try:
        return thresholds_with(base or Thresholds(), values)
    except (SelectionError, TypeError) as exc:
        raise SpecError(f"[select]: {exc}") from None


def dataclass_from(cls: type, values: dict, section: str) -> Any:
    """An instance of the dataclass `cls` from a TOML table; unknown keys are a SpecError that
    lists the valid ones, lists become tuples where the field is a tuple."""
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - valid
    if unknown:
        raise SpecError(f"[{section}] has unknown keys {sorted(unknown)}; valid: {sorted(valid)}")
    hints = typing.get_type_hints(cls)
    converted = {k: tuple(v) if isinstance(v, list) and "tuple" in str(hints.get(k)) else v
                 for k, v in values.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"[{section}]: {exc}") from None


def plain(value: Any) -> Any:
    """Tuples as lists, recursively (TOML and JSON have arrays)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
