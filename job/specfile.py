"""Reading spec text safely and saying what is wrong with it: `UserError` and `SpecError` (one printable
line per problem), bounded and escaped reprs for messages, and PyYAML hardened against hostile files
and `--set` values. Must not import torch or ray; knows nothing of the spec's sections.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import yaml

MAX_SPEC_BYTES = 1_000_000  # a spec is a page of YAML; anything this large is a mistake
# A spec is about five levels deep and a hundred values; these bounds are far above any real spec
# and far below what costs noticeable time or memory (a spec at the bounds loads in under a second, in ~10 MB).
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 10_000
MAX_SCALAR_CHARS = 4096  # PATH_MAX; also keeps PyYAML's int() of `1:2:3...` (base 60) cheap


class UserError(Exception):
    """A problem the user can fix (spec, file, data, storage, environment), one line per problem.

    Each line is made printable (control characters escaped) so input can never forge an `error:`
    line or drive the terminal. Pickles intact: Ray ships exceptions between processes, and the
    default pickling would rebuild it from the joined message, turning `problems` into a string."""

    def __init__(self, problems: list[str]) -> None:
        assert not isinstance(problems, str), f"pass a list of lines (got {problems!r})"
        self.problems = [_printable(line) for line in problems]
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.problems,)


class SpecError(UserError):
    """A problem with the spec, its file or what it names; raised everywhere below the CLI."""


def as_mapping(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError([f"spec: the top level must be a mapping of sections (got {type(raw).__name__}). Start with 'name: ...'"])
    return raw


def read_yaml(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([f"{path}: file too large for a spec (got {size} bytes). Keep it under {MAX_SPEC_BYTES} bytes"])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{path}: file not found. Check the path (specs/cifar10.yaml is the default)"]) from None
    except IsADirectoryError:
        raise SpecError([f"{path}: is a folder, not a spec file. Name a .yaml file"]) from None
    except (PermissionError, UnicodeDecodeError) as err:
        raise SpecError([f"{path}: cannot be read ({type(err).__name__}). Check its permissions and encoding"]) from None
    raw = _load_yaml(text, lambda parts: dotted(parts) if parts else str(path))
    if raw is None:
        raise SpecError([f"{path}: the file is empty. Start from specs/smoke.yaml"])
    return raw


def apply_override(raw: Any, item: str) -> None:
    path, sep, text = item.partition("=")
    if not sep or not path:
        raise SpecError([f"--set: expected dotted.path=value (got {short_repr(item)}). Example: --set optim.epochs=3"])
    parts = path.split(".")
    where = f"--set {dotted(parts)}"
    if len(parts) > MAX_YAML_DEPTH:
        raise SpecError([f"{where}: nested deeper than {MAX_YAML_DEPTH} levels (got {len(parts)}). Name a field of the spec."])
    value = _load_yaml(text, lambda inner: f"--set {dotted(parts + inner)}")
    node = as_mapping(raw)
    for key in parts[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SpecError([f"{where}: {short_repr(key)} is not a section (got {short_repr(node)}). Set a field inside a section"])
    node[parts[-1]] = value


def _load_yaml(text: str, where: Callable[[list[Any]], str]) -> Any:
    """Plain YAML through `_SpecLoader`; every way PyYAML can fail becomes one `SpecError` line."""
    try:
        loader = _SpecLoader(text, where)  # the reader refuses unprintable characters right here
        node = loader.get_single_node()
        return None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError([f"{where([])}: YAML syntax error{at}: {err.problem or err.context or 'invalid YAML'}. Fix the YAML there."]) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise SpecError(
            [
                f"{where([])}: YAML syntax error at line {line}: character #x{err.character:04x} is not allowed. "
                "Remove it, or write it as an escape in a double-quoted string."
            ]
        ) from None


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing while it composes (before any Python object is built) what a
    spec never needs and an attacker would use: type tags (`!!int abc` raises deep in PyYAML;
    `!!python/...`), anchors and aliases (`*a` lists of `*b` lists expand exponentially, "billion
    laughs", and `&a [*a]` is a value that contains itself; a spec is short enough to write out),
    non-string and duplicate keys (a repeated `optim:` silently replaced the first), and more than
    MAX_YAML_DEPTH levels, MAX_YAML_NODES values or MAX_SCALAR_CHARS characters in one value."""

    def __init__(self, text: str, where: Callable[[list[Any]], str]) -> None:
        super().__init__(text)
        self.where, self.path, self.nodes = where, [], 0
        self.keys: dict[int, dict[str, int]] = {}  # id of an open mapping node -> its keys' lines

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # a mapping value comes with its key's node, a sequence item with its index, a key with None
        self.path.append(index.value if isinstance(index, yaml.ScalarNode) else index)
        self._check(self.peek_event())
        node = super().compose_node(parent, index)
        self.path.pop()
        if isinstance(parent, yaml.MappingNode) and index is None:
            self._check_key(parent, node)
        return node

    def fetch_flow_collection_start(self, token_class: type) -> None:
        """Bound `[[[[...` already in the scanner: its look-ahead for keys costs depth x length."""
        if self.flow_level >= MAX_YAML_DEPTH:
            mark = self.get_mark()
            self._refuse(mark, f"nested deeper than {MAX_YAML_DEPTH} levels", f"'{self.peek()}'", "A spec is a few levels deep")
        super().fetch_flow_collection_start(token_class)

    def _check(self, event: yaml.Event) -> None:
        self.nodes += 1
        if isinstance(event, yaml.AliasEvent) or event.anchor:
            mark = "*" if isinstance(event, yaml.AliasEvent) else "&"
            self._refuse(event, "YAML anchors and aliases are not used in a spec", f"{mark}{shown(event.anchor)}", "Write the value out")
        if event.tag is not None:
            tag = event.tag.replace("tag:yaml.org,2002:", "!!")
            self._refuse(event, "YAML type tags are not used in a spec", short_repr(tag), "Remove the tag: the schema gives each value its type")
        if len(self.path) > MAX_YAML_DEPTH:
            self._refuse(event, f"nested deeper than {MAX_YAML_DEPTH} levels", "one more level", "A spec is a few levels deep")
        if self.nodes > MAX_YAML_NODES:
            self._refuse(event, f"more than {MAX_YAML_NODES} values", "one more", "A spec is a page of YAML")
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            self._refuse(event, f"a value longer than {MAX_SCALAR_CHARS} characters", f"{len(event.value)} characters", "Shorten it")

    def _check_key(self, mapping: yaml.MappingNode, key: yaml.Node) -> None:
        if not (isinstance(key, yaml.ScalarNode) and key.tag == "tag:yaml.org,2002:str"):
            kind = key.tag.rsplit(":", 1)[-1]
            got = f"{kind} {short_repr(key.value)}" if isinstance(key, yaml.ScalarNode) else "a list or mapping"
            self._refuse(key, "keys must be strings", got, "Quote the key, or remove it")
        seen = self.keys.setdefault(id(mapping), {})
        if key.value in seen:
            self.path.append(key.value)
            first = seen[key.value] + 1
            self._refuse(key, "duplicate key", "a second one", f"Merge it with the one at line {first}: the last would silently replace it")
        seen[key.value] = key.start_mark.line

    def _refuse(self, at: yaml.Event | yaml.Node | yaml.Mark, what: str, got: str, fix: str) -> NoReturn:
        where = self.where([p for p in self.path if p is not None])
        mark = at if isinstance(at, yaml.Mark) else at.start_mark
        line, column = mark.line + 1, mark.column + 1
        raise SpecError([f"{where}: {what} (got {got} at line {line}, column {column}). {fix}."])

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:  # PyYAML's readers of plain values: 2001-13-45, 1:1:...:1.5
            self._refuse(node, f"YAML cannot read this value ({str(err)[:80]})", short_repr(node.value), "Quote it if it is text")


def dotted(parts: list[Any]) -> str:
    """`search.space.optim.lr.grid[0]`, each key as `shown`: a path in a message cannot forge lines."""
    text = ""
    for part in parts:
        text = f"{text or 'spec'}[{part}]" if isinstance(part, int) else f"{text}{'.' if text else ''}{shown(part)}"
    return text or "spec"


def shown(text: Any) -> str:
    """A key or text as printed: itself when short, printable ASCII, else a short repr with
    non-ASCII escaped too, so a look-alike letter (Cyrillic 'о' in 'optim') shows as \u043e."""
    if isinstance(text, str) and 0 < len(text) <= 60 and text.isascii() and text.isprintable() and text == text.strip():
        return text
    return short_repr(text).encode("ascii", "backslashreplace").decode()


def short_repr(value: Any, limit: int = 80) -> str:
    """A bounded repr for messages: reprlib stops early in long or deep values (a 10,000-value grid,
    a huge string), and control characters come out escaped."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(line: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line)


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = 60, 60, 40, 4
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 10
