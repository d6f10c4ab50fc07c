"""Routing targets and IVR menus in the policy file: every configuration error."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentd.policy import (
    DialplanTarget,
    GroupTarget,
    HangupTarget,
    IvrTarget,
    VoicemailTarget,
    load_policies,
)
from tests.unit.test_policy import problems_of, write


def test_every_routing_target_and_menu_field_is_read(tmp_path: Path) -> None:
    book = load_policies(
        write(
            tmp_path,
            """\
            default: {recording: never}
            numbers:
              "+4930100020": {recording: opt_out, routing: {ivr: main}}
              "+4930100021":
                {recording: always, routing: {dialplan: {context: pbx, extension: "200"}}}
              "+4930100022": {recording: never, routing: {voicemail: true}}
              "+4930100023": {recording: never, routing: {hangup: true}}
            groups:
              support: {queue: support}
            ivr:
              main:
                options: {1: {group: support}, "#": {hangup: true}, "0": {ivr: main}}
                timeout: 2.5
                retries: 0
            """,
        )
    )
    numbers = book.config.numbers
    assert numbers["+4930100020"].routing == IvrTarget(ivr="main")
    routing = numbers["+4930100021"].routing
    assert isinstance(routing, DialplanTarget)
    assert (routing.dialplan.context, routing.dialplan.extension, routing.dialplan.priority) == (
        "pbx",
        "200",
        1,
    )
    assert numbers["+4930100022"].routing == VoicemailTarget(voicemail=True)
    assert numbers["+4930100023"].routing == HangupTarget(hangup=True)
    menu = book.config.ivr["main"]
    assert menu.options == {
        "1": GroupTarget(group="support"),
        "#": HangupTarget(hangup=True),
        "0": IvrTarget(ivr="main"),  # a cycle ("back") is allowed
    }
    assert (menu.timeout, menu.retries, menu.default) == (2.5, 0, HangupTarget(hangup=True))
    assert book.warnings == ()
    # IVR numbers play no consent greeting of their own: the menu's prompt mentions key 3.
    assert numbers["+4930100020"].greeting_kind is None


def test_key_3_in_a_nested_menu_of_an_opt_in_number_names_menu_key_and_number(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never}
        numbers:
          "+4930100020": {recording: opt_in, routing: {ivr: main}}
          "+4930100030": {recording: always, routing: {ivr: sales}}
        ivr:
          main:
            options: {"1": {ivr: sub}}
          sub:
            options: {"2": {ivr: deeper}, "0": {ivr: main}}
          deeper:
            options: {"3": {hangup: true}}
          sales:
            options: {"3": {hangup: true}}
        """,
    )

    (problem,) = problems_of(path)

    assert problem.line == 11
    assert problem.location == 'menu "deeper", key options.3'
    assert 'number "+4930100020" (opt_in)' in problem.message
    assert "key 3 decides recording consent" in problem.message
    # "sales" has key 3 too, but only an "always" number reaches it: allowed.


def test_key_3_is_reported_once_per_menu_for_every_number_that_reaches_it(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: opt_out, routing: {ivr: main}}
        numbers:
          "+4930100020": {recording: opt_in, routing: {ivr: main}}
        ivr:
          main:
            options: {3: {hangup: true}}
        """,
    )

    (problem,) = problems_of(path)

    assert "the default (opt_out)" in problem.message
    assert 'number "+4930100020" (opt_in)' in problem.message
    assert str(problem).startswith(f'{path}:6: menu "main", key options.3: ')


def test_undefined_group_and_menu_are_reported_with_every_other_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: sometimes}
        numbers:
          "+4930100020": {recording: opt_out, routing: {ivr: mian}}
          "+4930100021": {recording: opt_out, routing: {group: sales}}
        groups:
          support: {queue: support}
        ivr:
          main:
            options: {"1": {group: suport}, "12": {hangup: true}}
            timeout: 0
        """,
    )

    found = {(p.line, p.location): p.message for p in problems_of(path)}

    assert found[(1, "default, key recording")].startswith("Input should be")
    assert found[(3, 'number "+4930100020", key routing.ivr')] == (
        "menu 'mian' is not defined under ivr (defined: main)"
    )
    assert found[(4, 'number "+4930100021", key routing.group')] == (
        "group 'sales' is not defined under groups (defined: support)"
    )
    assert found[(9, 'menu "main", key options.1.group')] == (
        "group 'suport' is not defined under groups (defined: support)"
    )
    assert "'12' is not a single key" in found[(9, 'menu "main", key options.12')]
    assert "greater than 0" in found[(10, 'menu "main", key timeout')]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("{queue: support}", "a routing target is exactly one of {group: NAME}, {ivr: NAME}"),
        ("{group: support, ivr: main}", "a routing target is exactly one of"),
        ("{voicemail: false}", "Input should be True"),
        ("{dialplan: {context: pbx}}", "Field required"),
        ('{dialplan: {context: "bad context", extension: "1"}}', "should match pattern"),
        ('{dialplan: {context: pbx, extension: "1", priority: 0}}', "greater than or equal to 1"),
    ],
)
def test_a_malformed_routing_target_says_what_a_target_is(
    tmp_path: Path, target: str, expected: str
) -> None:
    path = write(
        tmp_path,
        f"""\
        default: {{recording: never}}
        numbers:
          "+4930100020": {{recording: never, routing: {target}}}
        groups:
          support: {{queue: support}}
        """,
    )

    problems = problems_of(path)

    assert any(
        expected in p.message and p.location.startswith('number "+4930100020", key routing')
        for p in problems
    ), [str(p) for p in problems]
    assert all("dialplan.dialplan" not in p.location for p in problems)


def test_a_menu_nothing_leads_to_is_a_warning_not_an_error(tmp_path: Path) -> None:
    book = load_policies(
        write(
            tmp_path,
            """\
            default: {recording: never}
            ivr:
              forgotten:
                options: {"1": {hangup: true}}
            """,
        )
    )

    (warning,) = book.warnings
    assert warning.line == 3
    assert warning.message == "menu 'forgotten' is not reachable from any number or the default"


def test_a_menu_without_options_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never, routing: {ivr: main}}
        ivr:
          main: {options: {}}
        """,
    )

    (problem,) = problems_of(path)
    assert problem.location == 'menu "main", key options'
    assert "at least 1" in problem.message


def test_a_missing_menu_greeting_file_names_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        default: {recording: never, routing: {ivr: main}}
        ivr:
          main:
            greeting: {file: greetings/main-menu.wav}
            options: {"1": {hangup: true}}
        """,
    )

    (problem,) = problems_of(path)
    assert problem.location == 'menu "main", key greeting.file'
    assert "main-menu.wav" in problem.message and "does not exist" in problem.message


def test_consentd_check_prints_warnings_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from consentd.cli import main

    path = write(
        tmp_path,
        """\
        default: {recording: never}
        ivr:
          forgotten:
            options: {"1": {hangup: true}}
        """,
    )

    assert main(["check", str(path)]) == 0

    out, err = capsys.readouterr()
    assert f"{path}:3: menu \"forgotten\": menu 'forgotten' is not reachable" in err
    assert "(warning)" in err
    assert "OK, 0 numbers" in out


def test_the_readmes_ivr_example_is_the_file_make_demo_runs_and_it_loads() -> None:
    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    block = readme.split("A complete example, verbatim from `examples/policies.yaml`")[1]
    example = block.split("```yaml\n", 1)[1].split("```", 1)[0]
    file = repo / "examples" / "policies.yaml"
    assert example == file.read_text()
    book = load_policies(file)
    assert book.config.numbers["+4930100021"].menu == "main"
    assert book.warnings == ()
