"""Load YAML while remembering where every value came from.

Operators edit the policy file by hand, so every error must point at a line.
PyYAML's plain loaders forget positions and silently keep the last of two
duplicate keys; this loader walks the composed node tree instead, keeps the
line of every key path and reports duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


class YamlSourceError(Exception):
    """The file cannot be read or is not well-formed YAML."""

    def __init__(self, file: Path, line: int | None, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {message}")


@dataclass
class YamlDocument:
    """Plain Python data plus the source line of every key path."""

    file: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    duplicates: list[tuple[KeyPath, int, int]] = field(default_factory=list)

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the deepest known prefix of ``path``."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def load_yaml(file: Path) -> YamlDocument:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlSourceError(file, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlSourceError(file, None, f"cannot read file: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise YamlSourceError(file, line, f"invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(file, None, f"invalid YAML: {exc}") from None
    doc = YamlDocument(file=file, data=None)
    if root is None:
        return doc
    doc.data = _convert(root, (), doc)
    return doc


def _convert(node: yaml.Node, path: KeyPath, doc: YamlDocument) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        first_seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _key(key_node)
            key_line = key_node.start_mark.line + 1
            child = (*path, key if isinstance(key, str | int) else str(key))
            if key in first_seen:
                doc.duplicates.append((child, first_seen[key], key_line))
                continue
            first_seen[key] = key_line
            doc.lines[child] = key_line
            result[key] = _convert(value_node, child, doc)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), doc) for i, item in enumerate(node.value)]
    return _scalar(node)


def _key(node: yaml.Node) -> Any:
    """Keys keep the text the operator wrote: YAML reads 0301234 as octal, +4930 as 4930."""
    value = _scalar(node)
    if isinstance(node, yaml.ScalarNode) and not isinstance(value, str):
        return node.value
    return value


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        # A mapping or list used as a key: keep it visible in the error message.
        return f"<{node.tag} at line {node.start_mark.line + 1}>"
    return yaml.constructor.SafeConstructor().construct_object(node)
