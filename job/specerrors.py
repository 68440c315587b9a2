"""Pydantic's validation errors as the lines users read: one per problem, at the user's own keys (a
variant named like a kind keeps its name), with the known fields of the section an unknown key sits in.
Level 0, below job.spec. Must not import torch or ray.
"""

from __future__ import annotations

import difflib
import functools
from typing import Annotated, Any, get_args

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from job.registry import MODEL_KINDS
from job.specfile import dotted, short_repr


def problems(model: type[BaseModel], err: ValidationError, schedulers: dict[str, type[BaseModel]]) -> list[str]:
    """One line per problem pydantic found in `model`'s input, at the user's own keys. `schedulers`: the
    scheduler kinds by tag, whose fields an unknown key under `search.scheduler` is checked against."""
    lines: list[str] = []
    for e in err.errors():
        path = dotted(_clean_loc(e["loc"]))
        if e["type"] == "extra_forbidden":
            lines.append(_unknown_key(model, path, e["loc"], schedulers))
        elif e["type"] == "union_tag_invalid":
            tags = e["ctx"]["expected_tags"]
            lines.append(f"{path}.kind: unknown kind (got {short_repr(e['ctx']['tag'])}). Use one of {tags}")
        elif e["type"] == "value_error":
            lines.extend(str(e["ctx"]["error"]).removesuffix(".").split("\n"))
        else:
            lines.append(f"{path}: {_what(e)} (got {short_repr(e.get('input'))}). Fix the value")
    return [line if line.endswith((".", "?")) else line + "." for line in dict.fromkeys(lines)]


def _what(error: Any) -> str:
    return error["msg"][0].lower() + error["msg"][1:]


def bad_values(where: str, domain: Any, model: type[BaseModel], key: str) -> list[str]:
    """A line for each grid or choice value, or range bound, that `model`'s field `key` refuses."""
    kind = next(iter(type(domain).model_fields))  # a domain has one field, named as its kind
    if key not in model.model_fields:
        return []  # _check_variants names the variant without it
    if kind in ("uniform", "loguniform") and model.model_fields[key].annotation is not float:
        return [f"{where}.{kind}: a range draws fractional numbers, but {key} is not a float field (got {kind}). Use grid or choice"]
    lines = []
    for i, value in enumerate(getattr(domain, kind)):
        try:
            _field_adapter(model, key).validate_python(value)
        except ValidationError as err:
            lines.append(f"{where}.{kind}[{i}]: {_what(err.errors()[0])} (got {short_repr(value)}). Use a value {key} accepts")
    return lines


@functools.cache
def _field_adapter(model: type[BaseModel], key: str) -> TypeAdapter[Any]:
    """The validator of one field alone, with its type and bounds: what a trial's spec will apply."""
    field: FieldInfo = model.model_fields[key]
    return TypeAdapter(Annotated[field.annotation, field])


def _tag_index(loc: tuple[Any, ...]) -> int | None:
    """Where pydantic puts a tagged union's tag into an error location: after a variant's name, after a
    trial's `model`, after `search.scheduler`, after a search path (a domain). Only there, so a user's
    variant named like a kind (`variants.mlp.hiden`) keeps its name."""
    for prefix, index in (("variants",), 2), (("model",), 1), (("search", "scheduler"), 2), (("search", "space"), 3), (("search", "variants"), 4):
        if loc[: len(prefix)] == prefix and len(loc) > index:
            return index
    return None


def _clean_loc(loc: tuple[Any, ...]) -> list[Any]:
    """The location as the user wrote it: the union tag pydantic adds is dropped, every user key kept."""
    tag = _tag_index(loc)
    return [p for i, p in enumerate(loc) if i != tag]


def _unknown_key(model: type[BaseModel], path: str, loc: tuple[Any, ...], schedulers: dict[str, type[BaseModel]]) -> str:
    """The line for an unknown key, with the known fields of its section: the kind or scheduler named by
    the union tag just above it, else the section reached by following the keys above it from `model`."""
    tag = _tag_index(loc)
    if tag == len(loc) - 2:
        section: Any = schedulers.get(loc[tag]) if loc[0] == "search" else MODEL_KINDS.get(loc[tag])
    else:
        section = model
        for key in loc[:-1]:
            field = section.model_fields.get(key) if section else None
            section = _section_type(field.annotation) if field else None
    known = list(section.model_fields) if section else []
    return not_a_field(path, str(loc[-1]), known)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The spec model a field holds: itself, or the model in an optional one (`MLflowSpec | None`)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def not_a_field(where: str, key: str, known: list[str]) -> str:
    """Says when the key has stray spaces: printed in a path they are easy to miss."""
    spaced = " (a key with a leading or trailing space)" if key != key.strip() else ""
    hint = difflib.get_close_matches(key.strip(), known, n=1, cutoff=0.5)
    fix = f"Did you mean '{hint[0]}'?" if hint else (f"Known fields: {', '.join(known)}." if known else "Remove it.")
    return f"{where}: not a field of the spec{spaced}. {fix}"
