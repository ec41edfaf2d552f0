"""YAML loading that remembers where every value came from (file and line).

The spec loader uses this to turn a pydantic error location such as ``('budget', 'max_trials')``
into ``experiments/job.yaml, line 12, field 'budget.max_trials'``.

Hostile or careless input ends as a located :class:`SpecError`, never a traceback or a hang: the
file must be UTF-8 text (a UTF-8 byte-order mark is accepted, UTF-16/32, NUL bytes and invalid
bytes are refused with their line), at most :data:`MAX_BYTES` long, nested at most
:data:`MAX_DEPTH` deep, and at most :data:`MAX_NODES` values once aliases are expanded (an
alias-expansion bomb stops there); an alias that refers to a collection containing it, keys that
are lists or mappings, and scalars YAML cannot construct (``2001-13-45``) are refused too.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from autotune.errors import SpecError

Loc = tuple[str | int, ...]

#: largest job (or preset) file read, in bytes
MAX_BYTES = 512 * 1024
#: deepest nesting of lists/mappings, counted after alias expansion
MAX_DEPTH = 50
#: most values (scalars, lists, mappings) in one document, counted after alias expansion
MAX_NODES = 50_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class Located:
    """A parsed YAML document and the line (1-based) of each key/value path in it."""

    data: Any
    file: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The line of the deepest prefix of ``loc`` that the document has."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)


class _LimitedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses documents nested or sized beyond the limits."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self._at_file = file
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._composed += 1
        if self._depth > MAX_DEPTH or self._composed > MAX_NODES:
            mark = self.peek_event().start_mark
            raise _too_big(self._at_file, mark.line + 1, self._depth > MAX_DEPTH, ())
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _too_big(file: str, line: int | None, deep: bool, loc: Loc) -> SpecError:
    if deep:
        return SpecError(
            f"the document is nested more than {MAX_DEPTH} levels deep (counting the levels that "
            "aliases such as *name add).", file=file, line=line, path=_dotted(loc) or None,
            hint="A job file needs a few levels; flatten the structure or remove the alias.",
        )
    return SpecError(
        f"the document holds more than {MAX_NODES} values once its aliases (*name) are expanded; "
        "this looks like an alias-expansion bomb.", file=file, line=line,
        path=_dotted(loc) or None,
        hint="Write the values out, or use fewer nested aliases.",
    )


class _Builder:
    """Turns the composed node graph into plain data, recording the line of every path.

    Aliases make the graph a DAG (or a cycle): expansion is bounded by depth and node count, and a
    node met again on its own path is a recursive alias.
    """

    def __init__(self, loader: _LimitedLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.count = 0
        self.path: list[int] = []  # ids of the collection nodes being built, outermost first

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        depth = len(self.path) + 1
        if depth > MAX_DEPTH or self.count > MAX_NODES:
            # name the key whose value expands, not the whole (possibly absurd) index path
            key_loc = loc
            while key_loc and not isinstance(key_loc[-1], str):
                key_loc = key_loc[:-1]
            raise _too_big(self.file, self.lines.get(key_loc, node.start_mark.line + 1),
                           depth > MAX_DEPTH, key_loc)
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, loc)
        if id(node) in self.path:
            raise SpecError(
                "this value contains itself through an alias (a recursive structure such as "
                "'x: &r [*r]').", file=self.file, line=self._line(loc, node),
                path=_dotted(loc) or None,
                hint="An alias (*name) may only refer to a value defined outside of itself.",
            )
        self.path.append(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            return [self.build(n, (*loc, i)) for i, n in enumerate(node.value)]
        finally:
            self.path.pop()

    def _line(self, loc: Loc, node: yaml.Node) -> int:
        return self.lines.get(loc, node.start_mark.line + 1)

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError:
            raise
        except Exception as exc:  # e.g. a timestamp such as 2001-13-45, '!!int abc'
            raise SpecError(
                f"cannot read the value '{node.value[:80]}' ({exc}).", file=self.file,
                line=node.start_mark.line + 1, path=_dotted(loc) or None,
                hint="Quote it to make it text, or correct it.",
            ) from None

    def _key(self, key_node: yaml.Node, loc: Loc) -> Any:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
            raise SpecError(
                f"a key must be a name (text or a number); found {kind} used as a key.",
                file=self.file, line=key_node.start_mark.line + 1, path=_dotted(loc) or None,
                hint="Write 'name: value'; a '?' or a '[...]'/'{...}' before the colon makes a "
                     "complex key, which a job file does not use.",
            )
        return self._scalar(key_node, loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        merges: list[yaml.Node] = []
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                subs = value_node.value if isinstance(value_node, yaml.SequenceNode) else [
                    value_node]
                for sub in subs:
                    if not isinstance(sub, yaml.MappingNode):
                        raise SpecError(
                            "a merge key '<<' takes a mapping or a list of mappings (aliases "
                            "such as *defaults).", file=self.file,
                            line=key_node.start_mark.line + 1, path=_dotted(loc) or None,
                        )
                merges.extend(subs)
            else:
                pairs.append((key_node, value_node))
        out: dict[Any, Any] = {}
        # merged mappings first, the earliest winning; then the explicit keys override them
        for sub in reversed(merges):
            if id(sub) in self.path:
                raise SpecError(
                    "this mapping merges itself ('<<: *name' inside the anchored mapping).",
                    file=self.file, line=self._line(loc, node), path=_dotted(loc) or None,
                    hint="Merge a mapping defined outside of this one.",
                )
            merged = self.build(sub, loc)
            if isinstance(merged, dict):
                out.update(merged)
        explicit: set[Any] = set()
        for key_node, value_node in pairs:
            key = self._key(key_node, loc)
            if key in explicit:
                raise SpecError(
                    f"the key '{key}' appears twice in the same mapping.", file=self.file,
                    line=key_node.start_mark.line + 1, path=_dotted((*loc, key)),
                    hint="Keep one of them.",
                )
            explicit.add(key)
            child = (*loc, key)
            self.lines[child] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, child)
            self.lines[child] = key_node.start_mark.line + 1
        return out


def decode_yaml_bytes(raw: bytes, file: str) -> str:
    """UTF-8 text of a job file, or a located error for any other encoding or binary content."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if raw.startswith(bom):
            _raise_encoding(
                f"the file is {name} text (it starts with a {name} byte-order mark); job files "
                "are UTF-8.", file, 1,
                hint=f"Save it as UTF-8, e.g. 'iconv -f {name} -t UTF-8 in.yaml > out.yaml'.")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]  # harmless; some editors write it
    nul = raw.find(b"\0")
    if nul >= 0:
        line, col = _position(raw, nul)
        _raise_encoding(
            f"the file contains a NUL byte (column {col}); it is binary, or UTF-16/32 text "
            "without a byte-order mark, not a UTF-8 YAML file.", file, line,
            hint="Save it as UTF-8 text.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _position(raw, exc.start)
        _raise_encoding(
            f"byte 0x{raw[exc.start]:02x} at column {col} is not valid UTF-8; job files are "
            "UTF-8 text.", file, line,
            hint="Save the file as UTF-8 (e.g. 'iconv -f latin1 -t UTF-8 in.yaml > out.yaml').")


def _position(raw: bytes, offset: int) -> tuple[int, int]:
    line = raw.count(b"\n", 0, offset) + 1
    col = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return line, col


def _raise_encoding(message: str, file: str, line: int, *, hint: str) -> NoReturn:
    raise SpecError(message, file=file, line=line, hint=hint)


def load_located(path: str | Path) -> Located:
    path = Path(path)
    try:
        if not path.is_file():
            if path.exists():
                raise SpecError(f"{path} is not a regular file.", file=str(path),
                                hint="Give the path to a YAML job file.")
            raise SpecError(f"no such file: {path}", file=str(path),
                            hint="Check the path to the job file.")
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}", file=str(path)) from None
    if len(raw) > MAX_BYTES:
        raise SpecError(f"the file is larger than {MAX_BYTES // 1024} KiB; a job file is a few "
                        "KiB of YAML.", file=str(path), line=1,
                        hint="Check that this is the job file you meant.")
    return load_located_text(decode_yaml_bytes(raw, str(path)), str(path))


def load_located_text(text: str, file: str) -> Located:
    if len(text) > MAX_BYTES:
        raise SpecError(f"the document is longer than {MAX_BYTES // 1024} KiB.", file=file,
                        line=1)
    text = text.removeprefix("\ufeff")
    loader: _LimitedLoader | None = None
    try:
        loader = _LimitedLoader(text, file)
        node = loader.get_single_node()
        builder = _Builder(loader, file)
        data = builder.build(node, ()) if node is not None else None
        lines = builder.lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        hint = ("Job files use plain YAML values: remove the tag (or quote the value)."
                if "constructor for the tag" in problem
                else "Check indentation, colons after keys and matching quotes.")
        raise SpecError(f"this is not valid YAML ({problem}).", file=file, line=line or 1,
                        hint=hint) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (control codes)
        pos = max(0, min(exc.position, len(text)))
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        ch = exc.character if isinstance(exc.character, str) else chr(exc.character or 0)
        raise SpecError(
            f"the character U+{ord(ch):04X} at column {col} is not allowed in YAML (a control "
            "character).", file=file, line=line,
            hint="Remove it; write it as an escape inside double quotes (\"\\x07\") if you "
                 "need it in a value.",
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"this is not valid YAML ({exc}).", file=file, line=1) from None
    except RecursionError:  # a safety net; the limits above stop real documents first
        raise SpecError(f"the document is nested too deeply (limit {MAX_DEPTH}).", file=file,
                        line=1) from None
    finally:
        if loader is not None:
            loader.dispose()
    return Located(data=data, file=file, lines=lines)


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


dotted = _dotted
