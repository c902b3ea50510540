"""Typed configuration sections built from YAML, with ``NEARCAST_*`` overrides.

Each stage package declares its own section as a frozen dataclass; this module
only knows how to build such a dataclass tree from a mapping, how to apply
environment overrides, and how to report an error that names the key at fault
(STYLE rule 5: ``'hls.window' must be at least 3``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def check(ok: bool, key: str, message: str) -> None:
    """Raise a :class:`ConfigError` quoting ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"'{key}' {message}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"'{key}' has an invalid value")
    if origin is typing.Literal:
        check(value in args, key, f"must be one of {', '.join(map(repr, args))}, not {value!r}")
        return value
    if origin in (list, tuple):
        check(isinstance(value, list | tuple), key, "must be a list")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        check(isinstance(value, Mapping), key, "must be a mapping")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        check(isinstance(value, Mapping), key, "must be a mapping")
        return build(tp, value, prefix=key)
    if tp is Any:
        return value
    if tp is bool:
        check(isinstance(value, bool), key, "must be true or false")
        return value
    if tp is float:
        check(
            isinstance(value, int | float) and not isinstance(value, bool), key, "must be a number"
        )
        return float(value)
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, "must be an integer")
        return value
    if tp is str:
        check(isinstance(value, str), key, "must be a string")
        return value
    raise ConfigError(f"'{key}' has unsupported type {_type_name(tp)}")


def build(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys take their defaults."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in data:
        if name not in names:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"'{key}' is not a known key")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            key = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # Section validators name keys relative to their section.
        msg = str(exc)
        if prefix and msg.startswith("'"):
            msg = f"'{prefix}.{msg[1:]}"
        raise ConfigError(msg) from None


def env_keys(cls: type[Any], prefix: str = "") -> dict[str, str]:
    """Map every ``NEARCAST_*`` variable name to the dotted key it overrides."""
    return {name: key for name, (key, _tp) in _env_fields(cls, prefix).items()}


def _env_fields(cls: type[Any], prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Every ``NEARCAST_*`` variable name -> (dotted key, the key's type)."""
    out: dict[str, tuple[str, Any]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.update(_env_fields(tp, key))
        else:
            out["NEARCAST_" + key.replace(".", "_").upper()] = (key, tp)
    return out


# NEARCAST_ variables that are not configuration keys: the file to load, and the
# operator token client commands read (nearcast status), which may well be exported
# in the shell that also starts a node.
NOT_KEYS = frozenset({"NEARCAST_CONFIG", "NEARCAST_OPERATOR_TOKEN"})


def apply_env(
    cls: type[Any], data: dict[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Return ``data`` with ``NEARCAST_SECTION_KEY=value`` overrides merged in.

    Values are parsed as YAML, so ``NEARCAST_HLS_WINDOW=8`` is an integer and
    ``NEARCAST_RTMP_TENANTS='[live, school]'`` a list; the value of a string key is
    taken as it is, so a secret such as ``NEARCAST_PLACEMENT_NODE_TOKEN=0123 #x``
    is neither a number nor cut at the ``#``.
    """
    environ = os.environ if environ is None else environ
    known = _env_fields(cls)
    for name, raw in environ.items():
        if not name.startswith("NEARCAST_") or name in NOT_KEYS:
            continue
        if name not in known:
            raise ConfigError(f"environment variable {name} names no configuration key")
        node = data
        key, tp = known[name]
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[leaf] = raw if tp is str or raw == "" else yaml.safe_load(raw)
    return data


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping at the top")
    return data


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config tree (for JSON and the equality test)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
