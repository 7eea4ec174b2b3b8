"""Configuration: typed dataclasses filled from a TOML file, then environment overrides.

A configuration is a (nested) frozen dataclass whose fields carry a ``doc`` in their
metadata. Values come, in order of precedence, from environment variables
(``BUSBELL_<SECTION>__<KEY>``, e.g. ``BUSBELL_MQTT__HOST``), the TOML file, then the
field defaults. Everything is validated at load; an error names the key and the
expected type. :func:`describe_config` lists every option for the docs.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from busbell._errors import ConfigError

__all__ = ["ENV_PREFIX", "ConfigOption", "describe_config", "load_config", "option"]

ENV_PREFIX = "BUSBELL_"
T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, doc: str, factory: Any = None) -> Any:
    """A documented dataclass field for a configuration class."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class ConfigOption:
    """One documented option: dotted key, type, default, doc and environment variable."""

    key: str
    type: str
    default: str
    doc: str
    env: str


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        arg = typing.get_args(tp)[0]
        return f"list of {_type_name(arg)}"
    if tp is type(None):
        return "none"
    if tp is Path:
        return "path"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, *, from_env: bool) -> Any:  # noqa: PLR0911, PLR0912
    origin = typing.get_origin(tp)
    expected = _type_name(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_env and value == "")):
            return None
        errors: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, from_env=from_env)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: expected {expected}, got {value!r}", key=key, expected=expected)
    if origin in (list, tuple):
        arg = typing.get_args(tp)[0]
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(
                f"{key}: expected {expected}, got {value!r}", key=key, expected=expected
            )
        return tuple(_coerce(v, arg, f"{key}[{i}]", from_env=from_env) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if from_env and isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value, 0)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path and isinstance(value, str) and value:
        return Path(value).expanduser()
    raise ConfigError(f"{key}: expected {expected}, got {value!r}", key=key, expected=expected)


def _build(cls: type[T], data: Mapping[str, Any], env: Mapping[str, str], path: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a table", key=path, expected="table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        bad = f"{path}.{min(unknown)}" if path else min(unknown)
        raise ConfigError(f"{bad}: unknown option", key=bad, expected="a documented option")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f"{path}.{f.name}" if path else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data.get(f.name, {}), env, key)  # type: ignore[arg-type]
            continue
        env_name = ENV_PREFIX + key.upper().replace(".", "__")
        if env_name in env:
            kwargs[f.name] = _coerce(env[env_name], tp, f"{key} (from {env_name})", from_env=True)
        elif f.name in data:
            kwargs[f.name] = _coerce(data[f.name], tp, key, from_env=False)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}", key=path) from None
    except ValueError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}", key=path) from None


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Load a configuration dataclass from TOML plus environment overrides.

    Args:
        cls: the configuration dataclass.
        path: a TOML file, or ``None`` for defaults (plus environment).
        env: the environment (``os.environ`` when ``None``).
        overrides: a nested mapping applied over the TOML data (CLI flags).

    Raises:
        ConfigError: on an unreadable file, bad TOML, an unknown key or a wrong type.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}", key="") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}", key="") from None
    if overrides:
        data = _merge(data, overrides)
    return _build(cls, data, os.environ if env is None else env, "")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _show(value: Any) -> str:
    if isinstance(value, Path):
        return repr(str(value))
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def describe_config(cls: type[Any], path: str = "") -> list[ConfigOption]:
    """Every option of a configuration dataclass, for documentation and ``--help``."""
    hints = typing.get_type_hints(cls)
    out: list[ConfigOption] = []
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(describe_config(tp, key))  # type: ignore[arg-type]
            continue
        if f.default is not dataclasses.MISSING:
            default = _show(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _show(f.default_factory())
        else:
            default = "(required)"
        out.append(
            ConfigOption(
                key=key,
                type=_type_name(tp),
                default=default,
                doc=str(f.metadata.get("doc", "")),
                env=ENV_PREFIX + key.upper().replace(".", "__"),
            )
        )
    return out
