"""Cross-references in a policy file: groups and menus that exist, and key 3.

These are checked on the raw YAML data, not on the validated model, so an
undefined group or menu is reported in the same pass as every other mistake
in the file, even when those keep the model from being built.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from consentd.yaml_source import KeyPath

CONSENT_KEY = "3"
ASKS_CALLER = ("opt_in", "opt_out")


@dataclass
class ReferenceReport:
    """Problems refuse the file; warnings are printed and the file is used."""

    problems: list[tuple[KeyPath, str]] = field(default_factory=list)
    warnings: list[tuple[KeyPath, str]] = field(default_factory=list)


def check_references(data: Any) -> ReferenceReport:
    report = ReferenceReport()
    if not isinstance(data, dict):
        return report
    groups = _mapping(data.get("groups"))
    menus = _mapping(data.get("ivr"))
    listings: dict[str, str] = {}  # once per section: a file may name thousands
    for path, kind, name in _references(data, menus):
        defined = groups if kind == "group" else menus
        if name not in defined:
            section = "groups" if kind == "group" else "ivr"
            noun = "group" if kind == "group" else "menu"
            if section not in listings:
                listings[section] = _listing(sorted(str(k) for k in defined))
            report.problems.append(
                (
                    (*path, kind),
                    f"{noun} {name!r} is not defined under {section} "
                    f"(defined: {listings[section]})",
                )
            )
    # Each start menu is explored once, and key 3 looked for once per menu, so a
    # file with many numbers and menus takes linear time, not numbers x menus.
    edges = {name: _menu_edges(menu, menus) for name, menu in menus.items()}
    consent_key = {
        name
        for name, menu in menus.items()
        if CONSENT_KEY in {str(k) for k in _mapping(_mapping(menu).get("options"))}
    }
    reached: set[str] = set()
    consent_key_reached: dict[str, list[str]] = {}  # start menu: menus with key 3
    askers: dict[str, tuple[list[tuple[int, str]], int]] = {}  # start: first 3, count
    for index, (label, policy) in enumerate(_policies(data)):
        start = _start_menu(policy)
        if start is None or start not in menus:
            continue
        if start not in consent_key_reached:
            seen = _reachable(start, edges)
            reached.update(seen)
            consent_key_reached[start] = [m for m in seen if m in consent_key]
        recording = policy.get("recording")
        if recording not in ASKS_CALLER:
            continue
        first, count = askers.get(start, ([], 0))
        if len(first) < 3:
            first.append((index, f"{label} ({recording})"))
        askers[start] = (first, count + 1)
    consent_key_menus: dict[str, tuple[list[tuple[int, str]], int]] = {}
    for start, (first, count) in askers.items():
        for menu in consent_key_reached[start]:
            before, total = consent_key_menus.get(menu, ([], 0))
            consent_key_menus[menu] = (sorted(before + first)[:3], total + count)
    for menu, (first, count) in consent_key_menus.items():
        numbers = [label for _, label in first]
        raw_key = next(
            k for k in _mapping(_mapping(menus[menu]).get("options")) if str(k) == CONSENT_KEY
        )
        more = f" and {count - 3} more" if count > 3 else ""
        report.problems.append(
            (
                ("ivr", menu, "options", raw_key),
                f"key 3 decides recording consent on {', '.join(numbers)}{more}, "
                f"which reach{'es' if count == 1 else ''} menu {menu!r}: "
                "it cannot be a menu option there (use another key)",
            )
        )
    for name, agent in _mapping(data.get("agents")).items():
        number = _mapping(agent).get("outbound_number")
        if isinstance(number, str) and number not in _mapping(data.get("numbers")):
            report.problems.append(
                (
                    ("agents", name, "outbound_number"),
                    f"{number} is not one of the numbers under numbers "
                    "(an agent calls out only as one of the operator's numbers)",
                )
            )
    for menu in menus:
        if menu not in reached:
            report.warnings.append(
                (("ivr", menu), f"menu {menu!r} is not reachable from any number or the default")
            )
    return report


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _policies(data: dict[Any, Any]) -> Iterator[tuple[str, dict[Any, Any]]]:
    """(label, raw policy) of the default and every number."""
    default = data.get("default")
    if isinstance(default, dict):
        yield "the default", default
    for number, policy in _mapping(data.get("numbers")).items():
        if isinstance(policy, dict):
            yield f'number "{number}"', policy


def _target(raw: Any) -> tuple[str, str] | None:
    """("group"|"ivr", name) of a routing target that names one."""
    if isinstance(raw, dict) and len(raw) == 1:
        ((kind, name),) = raw.items()
        if kind in ("group", "ivr") and isinstance(name, str):
            return kind, name
    return None


def _references(data: dict[Any, Any], menus: dict[Any, Any]) -> Iterator[tuple[KeyPath, str, str]]:
    """Every group and menu named anywhere, with the key path that names it."""
    places: list[tuple[KeyPath, Any]] = []
    default = data.get("default")
    if isinstance(default, dict):
        places.append((("default", "routing"), default.get("routing")))
    for number, policy in _mapping(data.get("numbers")).items():
        if isinstance(policy, dict):
            places.append((("numbers", number, "routing"), policy.get("routing")))
    for name, menu in menus.items():
        menu = _mapping(menu)
        for key, target in _mapping(menu.get("options")).items():
            places.append((("ivr", name, "options", key), target))
        if "default" in menu:
            places.append((("ivr", name, "default"), menu["default"]))
    for path, raw in places:
        ref = _target(raw)
        if ref is not None:
            yield path, ref[0], ref[1]


def _start_menu(policy: dict[Any, Any]) -> str | None:
    ref = _target(policy.get("routing"))
    return ref[1] if ref and ref[0] == "ivr" else None


def _menu_targets(menu: Any) -> Iterator[Any]:
    menu = _mapping(menu)
    yield from _mapping(menu.get("options")).values()
    if "default" in menu:
        yield menu["default"]


def _menu_edges(menu: Any, menus: dict[Any, Any]) -> list[str]:
    """The defined menus one menu leads to."""
    out: list[str] = []
    for raw in _menu_targets(menu):
        ref = _target(raw)
        if ref and ref[0] == "ivr" and ref[1] in menus:
            out.append(ref[1])
    return out


def _reachable(start: str, edges: dict[str, list[str]]) -> list[str]:
    """Menus reachable from ``start``, in the order a caller meets them (cycles allowed)."""
    seen = [start]
    known = {start}
    todo = deque([start])
    while todo:
        for menu in edges.get(todo.popleft(), ()):
            if menu not in known:
                known.add(menu)
                seen.append(menu)
                todo.append(menu)
    return seen


def _listing(names: list[str], most: int = 20) -> str:
    """``a, b, c``; ``none``; past ``most`` names, ``... and N more``."""
    if not names:
        return "none"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more
