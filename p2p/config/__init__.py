"""Typed configuration: one schema (`p2p.config.schema`), YAML presets that derive from presets,
dotted `section.key=value` overrides.

Every field carries a one-line `help`. Unknown keys, wrong types and invalid choices raise
`UsageError` naming the key and the nearest valid key or the allowed choices; the CLI turns
that into one line and exit code 2. The resolved config is saved in the run folder.

A config is changed after it is built only through `with_values` (dataclasses.replace under the
hood), so every changed section is checked again.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from p2p.config.schema import (BACKENDS, DEVICES, GAN_MODES, GENERATORS, INIT_TYPES, LR_POLICIES, NORMS, OPTIM_IMPLS,
                               PRECISIONS,
                               Config, DataConfig, EvalConfig, LossConfig, ModelConfig, OptimConfig, RunConfig,
                               SlurmConfig, TaskConfig, TrainConfig, bounds_of, sections)
from p2p.config.quoting import shown
from p2p.errors import UsageError

__all__ = [
    "Config", "RunConfig", "TaskConfig", "DataConfig", "ModelConfig", "LossConfig", "OptimConfig", "TrainConfig",
    "EvalConfig", "SlurmConfig", "NORMS", "GAN_MODES", "LR_POLICIES", "INIT_TYPES", "PRECISIONS", "BACKENDS",
    "DEVICES", "GENERATORS", "OPTIM_IMPLS",
    "load_config", "from_tree", "parse_override", "split_args", "config_from_args", "with_values", "help_table",
]


MAX_CONFIG_BYTES = 1 << 20  # a preset is a few kB; a larger file is not a config
MAX_BASE_DEPTH = 32  # `base:` chains


def _all_keys() -> list[str]:
    return [f"{name}.{f.name}" for name, cls in sections().items() for f in dataclasses.fields(cls)]


def _unknown(key: str) -> UsageError:
    key = key if isinstance(key, str) else shown(key)
    key = key[:200]  # a key from a hostile file can be megabytes long
    near = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    if not near:  # a bare field name, e.g. "lr" for "optim.lr"
        near = [k for k in _all_keys() if k.split(".")[-1] == key.split(".")[-1]][:1]
    hint = f"; did you mean {near[0]}?" if near else ""
    return UsageError(f"unknown config key {shown(key)}{hint}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's declared type; ints are accepted where floats are."""
    tp = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}.get(annotation, annotation)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. run.name=42
    if tp is str and value is None:
        return ""
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UsageError(f"{key}={shown(value)}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def _merge(tree: dict, updates: dict, prefix: str = "") -> None:
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(tree.get(k), dict) and not (prefix + k).endswith("slurm.extra"):
            _merge(tree[k], v, prefix + k + ".")
        else:
            tree[k] = v


def _parse_yaml(text: str, what: str) -> Any:
    """yaml.safe_load, every failure one UsageError: PyYAML recurses once per nesting level
    (RecursionError) and Python refuses ints of more than 4300 digits (ValueError)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UsageError(f"{what} is not valid YAML: {first}") from None
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply to be a config") from None
    except (ValueError, OverflowError) as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise UsageError(f"{what} holds a value that cannot be read: {str(e).split(';')[0]}") from None


def _load_yaml(path: Path, seen: tuple = ()) -> dict:
    """Read a preset; `base: other.yaml` (relative to the file) is loaded first and overridden."""
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise UsageError(f"config {path}: 'base' chain loops back to itself")
    if len(seen) >= MAX_BASE_DEPTH:
        raise UsageError(f"config {path}: 'base' chain is longer than {MAX_BASE_DEPTH} files")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise UsageError(f"config {path} is {path.stat().st_size:,} bytes: larger than a config can be "
                             f"({MAX_CONFIG_BYTES:,})")
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"config {path} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"config {path} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    data = _parse_yaml(text, f"config {path}") or {}
    if not isinstance(data, dict):
        raise UsageError(f"config {path}: expected a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise UsageError(f"config {path}: base={shown(base)} must be the path of another config file")
    tree = _load_yaml((path.parent / base), seen + (path.resolve(),))
    _merge(tree, data)
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value) with YAML typing (1 -> int, true -> bool, [1,2] -> list)."""
    if "=" not in text:
        raise UsageError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if len(text) > MAX_CONFIG_BYTES:
        raise UsageError(f"override {shown(text)} is {len(text):,} characters: larger than a config can be")
    try:
        value = _parse_yaml(raw, f"override {shown(key)}") if raw.strip() else ""
    except UsageError as e:
        if "not valid YAML" not in str(e):
            raise
        value = raw  # e.g. run.name=a:b: the words as given
    return key, value


def from_tree(tree: dict) -> Config:
    """Build a validated Config from nested dicts, rejecting anything the schema lacks."""
    if not isinstance(tree, dict):
        raise UsageError("config must be a mapping of sections")
    schema = sections()
    kwargs = {}
    for name, values in tree.items():
        if name not in schema:
            raise _unknown(name if isinstance(name, str) else shown(name))
        if not isinstance(values, dict):
            raise UsageError(f"config section {shown(name)} must be a mapping, got {shown(values)}")
        cls = schema[name]
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        args = {}
        for k, v in values.items():
            if k not in hints:
                raise _unknown(f"{name}.{k if isinstance(k, str) else shown(k)}")
            args[k] = _coerce(f"{name}.{k}", v, hints[k])
        kwargs[name] = cls(**args)
    return Config(**kwargs)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Defaults <- YAML preset (with its bases) <- `key=value` overrides, then validation."""
    tree: dict = {}
    if path:
        tree = _load_yaml(Path(path))
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if len(parts) < 2:
            raise _unknown(key)
        node = tree
        section = parts[0]
        if section not in sections():
            raise _unknown(key)
        if section == "slurm" and len(parts) > 2 and parts[1] == "extra":
            node = node.setdefault("slurm", {}).setdefault("extra", {})
            node[".".join(parts[2:])] = value
            continue
        if len(parts) != 2:
            raise _unknown(key)
        node.setdefault(section, {})[parts[1]] = value
    return from_tree(tree)


def help_table() -> list[tuple[str, str, str]]:
    """(key, default, help) for every field: what `p2p config --keys` prints."""
    rows = []
    cfg = Config()
    for sec in dataclasses.fields(Config):
        sub = getattr(cfg, sec.name)
        for f in dataclasses.fields(sub):
            key = f"{sec.name}.{f.name}"
            bounds = bounds_of(key)
            text = f.metadata.get("help", "") + (f" [{bounds[0]} .. {bounds[1]}]" if bounds else "")
            rows.append((key, repr(getattr(sub, f.name)), text))
    return rows



def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """Command-line words -> (config file, overrides): the first word without '=' is the file;
    everything else must be an override."""
    path, overrides = None, []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif path is None and not overrides:
            path = a
        else:
            raise UsageError(f"unexpected argument {a!r}: overrides look like section.key=value")
    return path, overrides


def config_from_args(args: list[str]) -> Config:
    """The config `p2p train ARGS` would run: [CONFIG.yaml] [section.key=value ...]."""
    path, overrides = split_args(args)
    return load_config(path, overrides)


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of `cfg` with `{"section.key": value}` changed, type-checked like an override and
    validated again (each changed section, then the whole)."""
    hints = {name: {f.name: f.type for f in dataclasses.fields(cls)} for name, cls in sections().items()}
    changes: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in hints or name not in hints[section]:
            raise _unknown(key)
        changes.setdefault(section, {})[name] = _coerce(key, value, hints[section][name])
    updated = {s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in changes.items()}
    return dataclasses.replace(cfg, **updated)
