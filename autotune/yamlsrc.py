"""YAML loading that remembers where every value came from (file and line).

The spec loader uses this to turn a pydantic error location such as ``('budget', 'max_trials')``
into ``experiments/job.yaml, line 12, field 'budget.max_trials'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autotune.errors import SpecError

Loc = tuple[str | int, ...]


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


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct(node: yaml.Node, loc: Loc, lines: dict[Loc, int], loader: yaml.SafeLoader) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise SpecError(
                    f"the key '{key}' appears twice in the same mapping.",
                    file=getattr(loader, "_at_file", None),
                    line=key_node.start_mark.line + 1,
                    path=_dotted((*loc, key)),
                    hint="Keep one of them.",
                )
            child = (*loc, key)
            lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, lines, loader)
            lines[child] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(n, (*loc, i), lines, loader) for i, n in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_located(path: str | Path) -> Located:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"no such file: {path}", hint="Check the path to the job file.") from None
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
    return load_located_text(text, str(path))


def load_located_text(text: str, file: str) -> Located:
    loader = _UniqueKeyLoader(text)
    loader._at_file = file  # type: ignore[attr-defined]
    try:
        node = loader.get_single_node()
        lines: dict[Loc, int] = {}
        data = _construct(node, (), lines, loader) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        raise SpecError(
            f"this is not valid YAML ({problem}).",
            file=file,
            line=line,
            hint="Check indentation, colons after keys and matching quotes.",
        ) from None
    finally:
        loader.dispose()
    return Located(data=data, file=file, lines=lines)


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


dotted = _dotted
