"""Configuration tools every layer uses: strict models, one error type, merging, YAML files and presets.

The presets are the YAML files shipped in :mod:`qflgym.configs` (``configs/<group>/<name>.yaml``).

Every config is a frozen :class:`StrictModel` that forbids unknown keys. :func:`build_config` turns validation
failures into a :class:`ConfigError` whose message names each bad field (dotted path), the value given and what
is allowed. Nothing is clamped or coerced: a value outside its range, of the wrong type or not finite is an
error.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

ModelT = TypeVar("ModelT", bound=BaseModel)

#: File suffixes of YAML files.
YAML_SUFFIXES = (".yaml", ".yml")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""


class StrictModel(BaseModel):
    """Base for all qflgym configs: frozen, unknown keys rejected, no coercion, finite numbers only.

    Validation is pydantic's strict mode: ``True`` is not an integer, ``"4"`` is not a number and ``"false"`` is
    not a boolean. The only conversions are the lossless ones a YAML file needs: an integer is accepted where a
    float is expected, and a list where a tuple is expected. NaN and infinities are rejected in every float field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _lists_to_tuples(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        fields = cls.model_fields
        return {
            key: tuple(value)
            if isinstance(value, list) and key in fields and _admits_tuple(fields[key].annotation)
            else value
            for key, value in data.items()
        }


def _admits_tuple(annotation: Any) -> bool:
    """Whether a field annotation is a tuple type or a union with a tuple member."""
    origin = get_origin(annotation)
    if origin is tuple:
        return True
    if origin is Annotated:
        return _admits_tuple(get_args(annotation)[0])
    return origin in (Union, UnionType) and any(_admits_tuple(arg) for arg in get_args(annotation))


def registered_name(registry_path: str) -> Callable[[str], str]:
    """Return a validator that accepts only names registered in a lazily imported registry.

    Args:
        registry_path: ``"module:attribute"`` of a :class:`~qflgym.registry.Registry`.
    """

    def check(value: str) -> str:
        module, attr = registry_path.split(":")
        registry = getattr(importlib.import_module(module), attr)
        if value not in registry:
            raise ValueError(f"unknown {registry.kind} {value!r}; allowed: {', '.join(registry.names())}")
        return value

    return check


def build_config(cls: type[ModelT], data: Mapping[str, Any], what: str) -> ModelT:
    """Validate ``data`` into ``cls``, turning pydantic errors into one :class:`ConfigError`.

    Args:
        cls: The config model.
        data: A plain nested mapping.
        what: What is being configured, for the message (e.g. ``"federation"``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} config must be a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, what)) from None


def format_validation_error(err: ValidationError, what: str) -> str:
    """Render a pydantic error as ``field: problem (got value)`` lines, allowed keys included for typos.

    Errors of the members of a union field (``int | tuple[int, ...]``) are reported on the field itself, as one
    line joining what each member expects; a member whose type does not fit the value is left out when another
    member reports a problem inside the value (``[0.0, nan]``: the element, not "should be a number").
    """
    items = [(_field_path(item["loc"]), item) for item in err.errors()]
    paths = {path for path, _ in items}
    problems: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    for path, item in items:
        loc = ".".join(str(p) for p in path)
        if item["type"] == "extra_forbidden":
            problems.setdefault(loc, []).append(f"unknown field{_allowed_keys_hint(err.title, item['loc'])}")
            continue
        inner = any(len(other) > len(path) and other[: len(path)] == path for other in paths)
        if inner and item["type"].endswith("_type"):
            continue
        problems.setdefault(loc, []).append(item["msg"].removeprefix("Value error, "))
        values.setdefault(loc, item.get("input"))
    lines = [f"invalid {what} config:"]
    for loc, messages in problems.items():
        messages = list(dict.fromkeys(messages))
        text = " or ".join([messages[0], *(m.removeprefix("Input should be ") for m in messages[1:])])
        if not loc:  # a check across fields names them itself
            lines.append(f"  {text}")
        else:
            lines.append(f"  {loc}: {text}" + (f" (got {values[loc]!r})" if loc in values else ""))
    return "\n".join(lines)


#: Location parts that name a member of a union or a validator, not a field (``int``, ``tuple[float, float]``).
_SCHEMA_TAG = re.compile(r"^(int|float|str|bool|none|bytes)$|^[a-z-]+\[|^function-")


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(part for part in loc if not (isinstance(part, str) and _SCHEMA_TAG.match(part)))


def _allowed_keys_hint(model_name: str, loc: tuple[Any, ...]) -> str:
    model = _MODELS.get(model_name)
    for part in loc[:-1]:
        if model is None:
            break
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is None:
        return ""
    return f"; allowed: {', '.join(model.model_fields)}"


_MODELS: dict[str, type[BaseModel]] = {}


def register_config_model(model: type[BaseModel]) -> type[BaseModel]:
    """Make ``model``'s field names available to error messages about unknown keys."""
    _MODELS[model.__name__] = model
    return model


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in recursively (mappings merge, everything else replaces)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float (YAML 1.2) instead of the string ``"1e-3"``."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader; exponent notation without a dot (``1e-3``) is a float."""
    return yaml.load(text, Loader=_YamlLoader)


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Read a YAML mapping from ``path``, with a clear error when it is missing or not a mapping.

    Args:
        path: The YAML file.
        what: What the file holds, for the error message (``"<what> file not found: <path>"``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    data = parse_yaml(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def preset_names(group: str) -> list[str]:
    """Names of the YAML presets shipped in ``configs/<group>/``."""
    folder = resources.files("qflgym.configs") / group
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(YAML_SUFFIXES))


def preset_path(group: str, name: str) -> Path:
    """The file of the preset ``configs/<group>/<name>.yaml`` (or ``.yml``) shipped with the package.

    Raises:
        ConfigError: Naming the available presets when ``name`` is unknown.
    """
    folder = resources.files("qflgym.configs") / group
    for suffix in YAML_SUFFIXES:
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return Path(str(candidate))
    raise ConfigError(f"unknown {group} preset {name!r}; allowed: {', '.join(preset_names(group))}")


def load_preset(group: str, name: str) -> dict[str, Any]:
    """Load the preset ``configs/<group>/<name>.yaml`` shipped with the package (see :func:`preset_path`)."""
    return load_yaml(preset_path(group, name), f"{group} preset")
