"""Loading typed configuration: YAML files, ``key.path=value`` overrides, one-line errors.

Every configuration in afm-ray is a pydantic model with ``extra="forbid"``; this module turns
pydantic's validation errors into :class:`~afm_ray.errors.InputError` s that name the file and the
dotted field, e.g. ``configs/dsh.yaml: optimizer.learning_rate: Input should be a valid number
(got 'fast')``. A value shown in an error is cut to :data:`SHOWN_VALUE_CHARS` characters, and a YAML
document whose aliases expand to more than :data:`MAX_YAML_NODES` nodes is refused (a few hundred bytes
of nested anchors expand to billions: "billion laughs").
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from afm_ray.errors import InputError

ModelT = TypeVar("ModelT", bound=BaseModel)

SHOWN_VALUE_CHARS = 120  # longest value quoted in an error message (characters)
MAX_YAML_NODES = 100_000  # YAML nodes a document may hold with every alias expanded (afm-ray's configs: < 1000)

_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlong = 3, 40
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 6
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = SHOWN_VALUE_CHARS


def shown_value(value) -> str:
    """``repr(value)`` cut to about :data:`SHOWN_VALUE_CHARS` characters, without building the whole repr
    (an aliased YAML value can expand to gigabytes)."""
    short = _SHORT_REPR.repr(value)
    return short if len(short) <= SHOWN_VALUE_CHARS else short[:SHOWN_VALUE_CHARS - 1] + "…"


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error's text on one line (YAML and library errors span several), cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


class _BoundedAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases expand to more than MAX_YAML_NODES nodes."""

    def compose_document(self):
        node = super().compose_document()
        sizes: dict[int, int] = {}  # expanded size of each distinct node: linear in the text, however deep the aliases

        def expanded(item) -> int:
            if id(item) not in sizes:
                if isinstance(item, yaml.MappingNode):
                    children = [child for pair in item.value for child in pair]
                else:
                    children = item.value if isinstance(item, yaml.SequenceNode) else []
                sizes[id(item)] = min(1 + sum(expanded(child) for child in children), MAX_YAML_NODES + 1)
            return sizes[id(item)]

        if node is not None and expanded(node) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_YAML_NODES} nodes")
        return node


def load_yaml_text(text: str):
    """``yaml.safe_load(text)``, refusing alias expansion beyond MAX_YAML_NODES nodes (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_BoundedAliasLoader)


class StrictModel(BaseModel):
    """Base of afm-ray's configs: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path``; clear errors for a missing file, bad YAML or a non-mapping."""
    path = Path(path)
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(str(path), f"cannot read config ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise InputError(str(path), f"not valid YAML ({one_line(exc)})") from None
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
            value = load_yaml_text(raw_value)
        except yaml.YAMLError as exc:
            raise InputError(f"{where} {override!r}", f"value is not valid YAML ({one_line(exc)})") from None
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
        shown = "" if first["type"] == "missing" or not first["loc"] else f" (got {shown_value(given)})"
        raise InputError(f"{where}: {field}", f"{first['msg']}{shown}{extra}") from None


def load_config(model_cls: type[ModelT], path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> ModelT:
    """Validate the YAML at ``path`` (or the defaults) with ``overrides`` applied."""
    data = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "config"
    return validate(model_cls, apply_overrides(data, overrides), where)
