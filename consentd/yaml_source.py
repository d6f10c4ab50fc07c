"""Load YAML while remembering where every value came from.

Operators edit the policy file by hand, so every error must point at a line.
PyYAML's plain loaders forget positions and silently keep the last of two
duplicate keys; this loader builds its own node tree from the parser's
events instead, keeps the line of every key path and reports duplicates.

It also takes hostile files, with a clear error instead of a hang, a crash or
a traceback (every failure is a :class:`YamlSourceError`):

- only a regular file is read (never a FIFO, a device or a directory), and
  never more than ``CONSENTD_MAX_POLICY_BYTES`` (10 MB by default);
- nesting is limited to :data:`MAX_DEPTH` levels, aliases included, and the
  tree is built without recursion, so 20,000 ``[`` cannot exhaust the stack;
- aliases may add at most :data:`MAX_ALIAS_NODES` values ("billion laughs"
  fails at the alias that crosses the limit), and an alias inside its own
  anchor (a recursive structure) is refused;
- merge keys (``<<: *defaults``) are supported; tags other than YAML's plain
  scalar, list and mapping types (``!!python/name:...``, ``!!binary``,
  ``!custom``) are refused, and so are values their tag cannot hold (a date
  such as ``2026-13-45``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]

#: The largest policy file read unless ``CONSENTD_MAX_POLICY_BYTES`` says otherwise.
DEFAULT_MAX_POLICY_BYTES = 10 * 1024 * 1024
MAX_POLICY_BYTES_VARIABLE = "CONSENTD_MAX_POLICY_BYTES"
#: Deepest nesting of lists and mappings, counting what aliases bring in.
MAX_DEPTH = 64
#: Values aliases may add to the document in all (a policy file needs few, if any).
MAX_ALIAS_NODES = 100_000

_CORE = "tag:yaml.org,2002:"
STR_TAG = _CORE + "str"
SEQ_TAG = _CORE + "seq"
MAP_TAG = _CORE + "map"
MERGE_TAG = _CORE + "merge"
#: Scalars read as text: ``<<`` outside a key and a lone ``=`` resolve to these.
_TEXT_TAGS = frozenset({STR_TAG, MERGE_TAG, _CORE + "value"})
#: Scalar tags read as YAML 1.1 reads them, and what a bad value is called in errors.
_VALUE_TAGS = {
    _CORE + "null": "null",
    _CORE + "bool": "true/false value",
    _CORE + "int": "whole number",
    _CORE + "float": "number",
    _CORE + "timestamp": "date or time",
}

_SCALAR, _SEQUENCE, _MAPPING = "scalar", "sequence", "mapping"
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels (lists and mappings)"

_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class YamlSourceError(Exception):
    """The file cannot be read or is not well-formed YAML.

    ``io_error`` is true when the file could not be read at all (missing,
    unreadable, too big, not a regular file): a usage problem rather than a
    mistake in the file.
    """

    def __init__(
        self, file: Path, line: int | None, message: str, *, io_error: bool = False
    ) -> None:
        self.file = file
        self.line = line
        self.message = message
        self.io_error = io_error
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


def max_policy_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The size limit: ``CONSENTD_MAX_POLICY_BYTES``, else 10 MB. ValueError if it is no size."""
    text = (os.environ if environ is None else environ).get(MAX_POLICY_BYTES_VARIABLE, "")
    if not text.strip():
        return DEFAULT_MAX_POLICY_BYTES
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_POLICY_BYTES_VARIABLE} must be a positive number of bytes")
    return value


def load_yaml(file: Path, *, max_bytes: int | None = None) -> YamlDocument:
    if max_bytes is None:
        try:
            max_bytes = max_policy_bytes()
        except ValueError as exc:
            raise YamlSourceError(file, None, str(exc), io_error=True) from None
    raw = read_limited(file, max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlSourceError(
            file,
            line,
            f"cannot read file: it is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
            "is not valid utf-8 there)",
        ) from None
    doc = YamlDocument(file=file, data=None)
    root = _compose(file, text)
    if root is None:
        return doc
    doc.data = _Converter(doc).convert(root, ())
    return doc


def read_limited(file: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``file``, never more than ``max_bytes`` of them.

    A FIFO, a device or a directory is refused before it is opened for
    reading (a FIFO would wait for a writer; /dev/zero never ends).
    """
    try:
        before = os.stat(file)
        _require_regular(file, before.st_mode)
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise YamlSourceError(file, None, "file not found", io_error=True) from None
    except OSError as exc:
        raise YamlSourceError(
            file, None, f"cannot read file: {exc.strerror or exc}", io_error=True
        ) from None
    chunks: list[bytes] = []
    size = 0
    try:
        # Swapped for something else since the stat above: check what was opened.
        opened = os.fstat(fd)
        _require_regular(file, opened.st_mode)
        if opened.st_size > max_bytes:
            size = opened.st_size  # too big: refused without reading it
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise YamlSourceError(
            file, None, f"cannot read file: {exc.strerror or exc}", io_error=True
        ) from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise YamlSourceError(
            file,
            None,
            f"cannot read file: it is larger than {max_bytes} bytes, the most a policy file "
            f"may hold ({MAX_POLICY_BYTES_VARIABLE})",
            io_error=True,
        )
    return b"".join(chunks)


def _require_regular(file: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_TYPES if test(mode)), "a special file")
    raise YamlSourceError(
        file, None, f"cannot read file: it is not a regular file ({kind})", io_error=True
    )


# ---------------------------------------------------------------- the node tree


class _Node:
    """A YAML node with its line, the values it expands to, and its depth."""

    __slots__ = ("anchor", "complete", "height", "items", "kind", "line", "size", "tag", "value")

    def __init__(self, kind: str, tag: str, line: int, value: str = "") -> None:
        self.kind = kind
        self.tag = tag
        self.line = line
        self.value = value  # scalars
        self.items: list[_Node] = []  # lists; keys and values alternating for mappings
        self.anchor: str | None = None
        self.complete = kind == _SCALAR  # an alias to an open collection is recursive
        self.size = 1  # nodes, once every alias is expanded
        self.height = 1  # levels, once every alias is expanded

    def pairs(self) -> Iterator[tuple[_Node, _Node]]:
        return zip(self.items[::2], self.items[1::2], strict=True)


#: The parser: libyaml's when PyYAML has it (a 10 MB file in a second), else PyYAML's own.
PARSER: type[yaml.CSafeLoader] | type[yaml.SafeLoader] = (
    yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
)


def _events(text: str) -> Iterator[yaml.Event]:
    return yaml.parse(text, Loader=PARSER)


def _compose(file: Path, text: str) -> _Node | None:
    """The document's node tree, built without recursion, or None for an empty file."""
    resolver = yaml.resolver.Resolver()
    anchors: dict[str, _Node] = {}
    open_nodes: list[_Node] = []
    root: _Node | None = None
    documents = 0
    alias_nodes = 0

    def fail(line: int, message: str) -> YamlSourceError:
        return YamlSourceError(file, line, message)

    def add(node: _Node, line: int) -> None:
        nonlocal root
        if len(open_nodes) + node.height > MAX_DEPTH:
            raise fail(line, _TOO_DEEP)
        if not open_nodes:
            root = node
            return
        parent = open_nodes[-1]
        parent.items.append(node)
        parent.size += node.size
        parent.height = max(parent.height, node.height + 1)

    def anchor(node: _Node, name: str | None, line: int) -> None:
        if name is None:
            return
        first = anchors.get(name)
        if first is not None:
            raise fail(line, f"anchor &{name} is defined twice (first at line {first.line})")
        node.anchor = name
        anchors[name] = node

    try:
        for event in _events(text):
            line = event.start_mark.line + 1 if event.start_mark else 0
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise fail(
                        line,
                        "a second YAML document (---) in the file; a policy file is one document",
                    )
            elif isinstance(event, yaml.AliasEvent):
                target = anchors.get(event.anchor or "")
                if target is None:
                    raise fail(line, f"alias *{event.anchor} refers to no anchor defined above it")
                if not target.complete:
                    raise fail(
                        line,
                        f"alias *{event.anchor} is recursive: it is inside the value it refers "
                        f"to (&{event.anchor} at line {target.line})",
                    )
                alias_nodes += target.size
                if alias_nodes > MAX_ALIAS_NODES:
                    raise fail(
                        line,
                        f"aliases expand to more than {MAX_ALIAS_NODES} values (at alias "
                        f"*{event.anchor}); write the values out or use fewer aliases",
                    )
                add(target, line)
            elif isinstance(event, yaml.ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = str(resolver.resolve(yaml.ScalarNode, event.value, event.implicit))  # type: ignore[no-untyped-call]
                node = _Node(_SCALAR, tag, line, event.value)
                anchor(node, event.anchor, line)
                add(node, line)
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                is_map = isinstance(event, yaml.MappingStartEvent)
                tag = event.tag
                if tag is None or tag == "!":
                    tag = MAP_TAG if is_map else SEQ_TAG
                node = _Node(_MAPPING if is_map else _SEQUENCE, tag, line)
                anchor(node, event.anchor, line)
                if len(open_nodes) + 1 > MAX_DEPTH:
                    raise fail(line, _TOO_DEEP)
                open_nodes.append(node)
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                node = open_nodes.pop()
                node.complete = True
                add(node, node.line)
    except yaml.MarkedYAMLError as exc:
        at = exc.problem_mark.line + 1 if exc.problem_mark else None
        if "maximum nesting depth" in str(exc.problem):  # libyaml's own limit (1000)
            raise fail(at or 0, _TOO_DEEP) from None
        raise YamlSourceError(file, at, f"invalid YAML: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:
        # libyaml counts bytes of the UTF-8 text, PyYAML characters.
        if PARSER is not yaml.SafeLoader:
            line = text.encode("utf-8").count(b"\n", 0, exc.position) + 1
        else:
            line = text.count("\n", 0, exc.position) + 1
        shown = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a character"
        raise YamlSourceError(file, line, f"invalid YAML: {shown} is not allowed") from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(file, None, f"invalid YAML: {exc}") from None
    return root


# ---------------------------------------------------------------- plain data


def _shown_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


class _Converter:
    """Plain Python data from the node tree, recording the line of every key path."""

    def __init__(self, doc: YamlDocument) -> None:
        self.doc = doc
        self.constructor = yaml.constructor.SafeConstructor()
        self.constructors = yaml.constructor.SafeConstructor.yaml_constructors

    def fail(self, node: _Node, message: str) -> YamlSourceError:
        return YamlSourceError(self.doc.file, node.line, message)

    def convert(self, node: _Node, path: KeyPath) -> Any:
        self.doc.lines.setdefault(path, node.line)
        if node.kind == _MAPPING:
            self.require_tag(node, MAP_TAG)
            return self.mapping(node, path)
        if node.kind == _SEQUENCE:
            self.require_tag(node, SEQ_TAG)
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.items)]
        return self.scalar(node)

    def require_tag(self, node: _Node, tag: str) -> None:
        if node.tag != tag:
            raise self.fail(node, self.tag_refused(node))

    def tag_refused(self, node: _Node) -> str:
        return (
            f"tag {_shown_tag(node.tag)} is not allowed in a policy file "
            "(only plain text, numbers, true/false, lists and mappings)"
        )

    def mapping(self, node: _Node, path: KeyPath) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        first_seen: dict[Any, int] = {}
        merged: list[tuple[_Node, _Node, int]] = []
        for key_node, value_node in node.pairs():
            if key_node.kind == _SCALAR and key_node.tag == MERGE_TAG:
                merged += self.merged_pairs(key_node, value_node)
                continue
            key = self.key(key_node)
            child = (*path, key)
            if key in first_seen:
                self.doc.duplicates.append((child, first_seen[key], key_node.line))
                continue
            first_seen[key] = key_node.line
            self.doc.lines[child] = key_node.line
            result[key] = self.convert(value_node, child)
        # Keys written in the mapping win over merged ones; of the merged, the first wins.
        for key_node, value_node, line in merged:
            key = self.key(key_node)
            if key in result:
                continue
            child = (*path, key)
            self.doc.lines[child] = line
            result[key] = self.convert(value_node, child)
        return result

    def merged_pairs(self, key_node: _Node, value_node: _Node) -> list[tuple[_Node, _Node, int]]:
        """The pairs ``<<: *a`` or ``<<: [*a, *b]`` brings in, reported at the ``<<`` line."""
        sources = value_node.items if value_node.kind == _SEQUENCE else [value_node]
        if any(source.kind != _MAPPING for source in sources):
            raise self.fail(
                key_node,
                "a merge key (<<) takes a mapping or a list of mappings, "
                "such as <<: *defaults or <<: [*a, *b]",
            )
        pairs: list[tuple[_Node, _Node, int]] = []
        for source in sources:
            self.require_tag(source, MAP_TAG)
            for key, value in source.pairs():
                if key.kind == _SCALAR and key.tag == MERGE_TAG:
                    pairs += self.merged_pairs(key, value)  # depth is bounded by MAX_DEPTH
                else:
                    pairs.append((key, value, key_node.line))
        return pairs

    def key(self, node: _Node) -> str:
        """Keys keep the text the operator wrote: YAML reads 0301234 as octal, +4930 as 4930."""
        if node.kind != _SCALAR:
            # A mapping or list used as a key: keep it visible in the error message.
            return f"<{_shown_tag(node.tag)} at line {node.line}>"
        if node.tag not in _TEXT_TAGS and node.tag not in _VALUE_TAGS:
            raise self.fail(node, self.tag_refused(node))
        return node.value

    def scalar(self, node: _Node) -> Any:
        if node.tag in _TEXT_TAGS:
            return node.value
        kind = _VALUE_TAGS.get(node.tag)
        if kind is None:
            raise self.fail(node, self.tag_refused(node))
        try:
            construct = self.constructors[node.tag]
            return construct(self.constructor, yaml.ScalarNode(node.tag, node.value))
        except Exception:  # whatever PyYAML raises for a value its tag cannot hold
            shown = node.value if len(node.value) <= 40 else node.value[:40] + "..."
            hint = "; quote it to use it as text" if node.tag != _CORE + "int" else ""
            raise self.fail(node, f"{shown!r} is not a valid {kind}{hint}") from None
