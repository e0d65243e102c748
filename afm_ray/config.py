"""Loading typed configuration: YAML files, ``key.path=value`` overrides, one-line errors.

Every configuration in afm-ray is a pydantic model with ``extra="forbid"``; this module turns
pydantic's validation errors into :class:`~afm_ray.errors.InputError` s that name the file and the
dotted field, e.g. ``configs/dsh.yaml: optimizer.learning_rate: Input should be a valid number
(got 'fast')``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from afm_ray.errors import InputError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of afm-ray's configs: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path``; clear errors for a missing file, bad YAML or a non-mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(str(path), f"cannot read config ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise InputError(str(path), f"not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(str(path), f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], where: str = "override") -> dict:
    """A copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML: ``3``, ``1e-3``, ``[1, 2]``)."""
    import copy

    data = copy.deepcopy(data)
    for override in overrides:
        key, separator, raw_value = override.partition("=")
        if not separator or not key.strip():
            raise InputError(f"{where} {override!r}", "expected KEY.PATH=VALUE")
        try:
            value = yaml.safe_load(raw_value)
        except yaml.YAMLError as exc:
            raise InputError(f"{where} {override!r}", f"value is not valid YAML ({exc})") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"{where} {override!r}", f"{part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def validate(model_cls: type[ModelT], data, where: str) -> ModelT:
    """``model_cls.model_validate(data)`` with errors naming ``where`` and the dotted field."""
    if not isinstance(data, dict):
        raise InputError(where, f"expected a mapping, got {type(data).__name__}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        extra = f"; {exc.error_count() - 1} more error(s)" if exc.error_count() > 1 else ""
        given = first.get("input")
        # a model-level check's input is the whole config: not worth repeating
        shown = "" if first["type"] == "missing" or not first["loc"] else f" (got {given!r})"
        raise InputError(f"{where}: {field}", f"{first['msg']}{shown}{extra}") from None


def load_config(model_cls: type[ModelT], path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> ModelT:
    """Validate the YAML at ``path`` (or the defaults) with ``overrides`` applied."""
    data = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "config"
    return validate(model_cls, apply_overrides(data, overrides), where)
