"""The machinery every config dataclass shares: strict dict/YAML/JSON round trip, choice checks, overrides.

Configs round-trip through YAML and JSON. Unknown keys and values of the wrong type are refused with the
key named, in the spirit of nanoGPT's configurator but without ``exec``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's scalars: ``1e-6`` is a float (YAML 1.1 wants ``1.0e-6``), and
    only true/false are booleans (YAML 1.1 also reads ``no``, ``yes``, ``on``, ``off`` as booleans, which
    would turn ``mixed_precision: no`` into ``False``)."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class ConfigError(ValueError):
    """A configuration key is unknown, or its value has the wrong type or an invalid value."""


class ConfigBase:
    """Shared behaviour of the config dataclasses: dict/YAML/JSON round trip with strict checks."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, in declaration order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build a config from a dict, refusing unknown keys and wrong types (the key is named)."""
        return _from_dict(cls, data)

    @classmethod
    def from_parameters(cls, namespace: dict[str, Any], **overrides: Any):
        """Build a config from the fields found in ``namespace`` (a notebook's ``globals()``, or a
        parameters file), ignoring other names; ``overrides`` win."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({**{k: v for k, v in namespace.items() if k in names}, **overrides})

    @classmethod
    def load(cls, path: str | Path):
        """Load a YAML (``.yaml``/``.yml``) or JSON file."""
        return cls.from_dict(load_mapping(path))

    def save(self, path: str | Path) -> Path:
        """Write the config as YAML or JSON, chosen by the file's suffix."""
        return save_mapping(self.to_dict(), path)

    def to_yaml(self) -> str:
        """The config as YAML text, in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any):
        """A copy with some fields changed, type-checked like :meth:`from_dict`."""
        return self.from_dict({**self.to_dict(), **changes})

    def validate(self):
        """Check values that a type alone cannot; returns self."""
        return self


# ------------------------------------------------------------------------------------------------
# (de)serialisation helpers, shared by every config dataclass of the package
# ------------------------------------------------------------------------------------------------


def check_choice(key: str, value: Any, choices: tuple) -> None:
    """Refuse a value outside ``choices`` with :class:`ConfigError` naming the key (the one choice check)."""
    if value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` checked against the annotation ``tp``; raise :class:`ConfigError` naming ``key``.

    ``int`` is accepted where ``float`` is declared (and converted); ``bool`` is never taken for a number
    nor a number for a ``bool``; ``Optional[X]`` admits ``None``.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(
            f"config key '{key}' expects {' or '.join(_type_name(a) for a in args)}, "
            f"got {type(value).__name__} {value!r}"
        )
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return origin(items)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _from_dict(cls: type, data: dict[str, Any]):
    if not isinstance(data, dict):
        raise ConfigError(f"a {cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r} for {cls.__name__}"
            + (f" (also: {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
            + _did_you_mean(unknown[0], names)
        )
    values = {k: coerce(k, v, hints[k]) for k, v in data.items()}
    return cls(**values)


def _did_you_mean(key: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping; a missing file or a non-mapping is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=YamlLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot parse: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def save_mapping(data: dict[str, Any], path: str | Path) -> Path:
    """Write a mapping as JSON (``.json``) or YAML (anything else), atomically."""
    from ..utils import atomic_write_text

    path = Path(path)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(path, text)
    return path


def parse_overrides(argv: list[str], types_: type | dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse ``--key value`` / ``--key=value`` pairs.

    Values are read as YAML scalars (``1e-4``, ``true``, ``null``), except that for a string field of
    ``types_`` (a config class, or a name -> type mapping) the text is kept as typed (``--revision 1.0``, ``--mixed_precision no``, ``--validation_prompt
    "sks: dog"``); ``null``/``None`` still clear an optional string.
    """
    string_fields = _string_fields(types_) if types_ is not None else {}
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"expected --key value, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"config key '{key}' given without a value")
            i += 1
            raw = argv[i]
        key = key.replace("-", "_")
        if key in string_fields:
            optional = string_fields[key]
            out[key] = None if optional and raw in ("null", "None", "~") else raw
        else:
            out[key] = _yaml_scalar(raw)
        i += 1
    return out


def _string_fields(types_: type | dict[str, Any]) -> dict[str, bool]:
    """``{field: is_optional}`` for the ``str`` and ``Optional[str]`` fields of a config class or mapping."""
    out = {}
    hints = types_ if isinstance(types_, dict) else typing.get_type_hints(types_)
    for name, tp in hints.items():
        args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        if str in args and all(a in (str, type(None)) for a in args):
            out[name] = type(None) in args
    return out


def _yaml_scalar(raw: str) -> Any:
    try:
        return yaml.load(raw, Loader=YamlLoader)
    except yaml.YAMLError:
        return raw


def check_at_least(config: Any, minimum: int, *keys: str) -> None:
    """Refuse any of ``keys`` of ``config`` below ``minimum``, naming the key."""
    for key in keys:
        value = getattr(config, key)
        if value < minimum:
            raise ConfigError(f"config key '{key}' must be >= {minimum}, got {value!r}")


def resumable(default: Any = dataclasses.MISSING, **kwargs: Any):
    """A dataclass field that may change when a run is resumed (it changes no result of the run)."""
    return dataclasses.field(default=default, metadata={"resumable": True}, **kwargs)


def resumable_fields(cls: type) -> frozenset[str]:
    """The fields of a config class marked :func:`resumable`."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable"))
