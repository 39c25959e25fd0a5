"""Command templates: syntax refusals, and substituted values proven inert by a real bash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpiengine_sdk.errors import TemplateError
from mpiengine_sdk.template import (
    check_template,
    check_values,
    placeholders,
    render,
    render_word,
)


def bash_args(rendered: str, cwd: Path) -> list[str]:
    """The words a real bash makes of ``rendered``, printed back NUL-separated."""
    done = subprocess.run(
        # "start" first: printf with no arguments would still print one empty word.
        ["bash", "-c", "printf '%s\\0' start " + rendered],
        capture_output=True,
        cwd=cwd,
        timeout=30,
        check=True,
    )
    words = done.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]
    assert words[0] == "start"
    return words[1:]


INJECTIONS = [
    "; rm -rf /",
    "$(touch pwned)",
    "`touch pwned`",
    "' ; touch pwned ; '",
    '" ; touch pwned ; "',
    "a\nb\ntouch pwned",
    "&& touch pwned",
    "| touch pwned",
    "> pwned",
    "$HOME",
    "${IFS}",
    "*",
    "~",
    "-n",
    "",
    "\\",
    "a b\tc",
    "{x}",
    "!!",
    "#comment",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_attempts_arrive_verbatim_as_one_word(value, tmp_path):
    rendered = render("{value}", {"value": value})
    assert bash_args(rendered, tmp_path) == [value]
    assert not (tmp_path / "pwned").exists()


def test_values_inside_a_larger_command(tmp_path):
    rendered = render("{a} mid{b}dle {c}", {"a": "x y", "b": "$(id)", "c": ["1 2", "'", ""]})
    assert bash_args(rendered, tmp_path) == ["x y", "mid$(id)dle", "1 2", "'", ""]


def test_list_is_quoted_element_wise(tmp_path):
    rendered = render("{files}", {"files": ["a b", "; touch pwned", "c"]})
    assert bash_args(rendered, tmp_path) == ["a b", "; touch pwned", "c"]
    assert not (tmp_path / "pwned").exists()


def test_empty_list_is_no_words(tmp_path):
    assert bash_args(render("{files}", {"files": []}), tmp_path) == []


def test_non_string_values_are_stringified(tmp_path):
    rendered = render("{n} {x} {p}", {"n": 3, "x": 1.5, "p": Path("/a b/c")})
    assert bash_args(rendered, tmp_path) == ["3", "1.5", "/a b/c"]


def test_raw_names_are_inserted_verbatim(tmp_path):
    rendered = render("echo {word} {pipe} tr a b", {"word": "a|b", "pipe": "|"}, raw=["pipe"])
    assert rendered == "echo 'a|b' | tr a b"
    out = subprocess.run(["bash", "-c", rendered], capture_output=True, text=True, check=True)
    assert out.stdout == "b|b\n"


def test_raw_list_is_joined_verbatim():
    assert render("ls {opts}", {"opts": ["-l", "-a"]}, raw={"opts"}) == "ls -l -a"


def test_literal_braces():
    assert render("awk '{{print $1}}' {f}", {"f": "x y"}) == "awk '{print $1}' 'x y'"
    assert placeholders("{{a}} {b}") == frozenset({"b"})


def test_placeholders():
    assert placeholders("cp {src} {dst} {src}") == frozenset({"src", "dst"})
    assert placeholders("no fields") == frozenset()


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("echo {}", "positional field {}"),
        ("echo {0}", "positional field {0}"),
        ("echo {a.b}", "attribute or index access"),
        ("echo {a[0]}", "attribute or index access"),
        ("echo {a.__class__}", "attribute or index access"),
        ("echo {a!r}", "conversion or format spec"),
        ("echo {a:>10}", "conversion or format spec"),
        ("echo {a:{b}}", "conversion or format spec"),
        ("echo { a }", "not a Python identifier"),
        ("echo {a-b}", "not a Python identifier"),
        ("echo }", "malformed"),
        ("echo {", "malformed"),
        ("echo {a", "malformed"),
        ("echo {a}}", "malformed"),
        ("echo \0", "NUL"),
    ],
)
def test_bad_syntax_says_what_is_wrong_and_allowed(template, fragment):
    with pytest.raises(TemplateError) as info:
        placeholders(template)
    assert fragment in str(info.value)
    assert "{name}" in str(info.value) or "NUL" in str(info.value)


def test_template_must_be_str():
    with pytest.raises(TemplateError, match="must be a str"):
        placeholders(b"echo")  # type: ignore[arg-type]


def test_missing_value():
    with pytest.raises(TemplateError, match=r"no value for placeholder\(s\) \['b'\]"):
        render("{a} {b}", {"a": 1})


def test_unused_value():
    with pytest.raises(TemplateError, match=r"\['c'\] are not used"):
        render("{a}", {"a": 1, "c": 2})


def test_raw_must_name_placeholders():
    with pytest.raises(TemplateError, match=r"raw names \['x'\] are not placeholders"):
        check_template("{a}", raw=["x"])
    with pytest.raises(TemplateError, match="not one string"):
        check_template("{a}", raw="a")
    assert check_template("{a} {b}", raw=["a"]) == frozenset({"a", "b"})


@pytest.mark.parametrize("value", [None, b"bytes", [["nested"]], {"a": 1}, "nul\0byte"])
def test_values_that_are_not_shell_words_are_refused(value):
    with pytest.raises(TemplateError, match=r"\{v\}"):
        render("{v}", {"v": value})


def test_check_values():
    check_values(frozenset({"a"}), {"a": 1})
    with pytest.raises(TemplateError):
        check_values(frozenset({"a"}), {})


def test_render_word_is_verbatim_and_single():
    assert render_word("--out={path}", {"path": "a b; $(x)"}) == "--out=a b; $(x)"
    assert render_word("{{literal}}", {}) == "{literal}"
    with pytest.raises(TemplateError, match="needs a value"):
        render_word("{a}", {})
    with pytest.raises(TemplateError, match="its own argv element"):
        render_word("{a}", {"a": ["x", "y"]})


# Any text a str can hold except NUL (no process argument can carry one), and surrogates (not
# encodable for a command line).
shell_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=60
)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(shell_text, min_size=1, max_size=4))
def test_arbitrary_text_arrives_verbatim(values, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bash")
    names = [f"v{i}" for i in range(len(values))]
    template = " ".join("{" + n + "}" for n in names)
    rendered = render(template, dict(zip(names, values, strict=True)))
    assert bash_args(rendered, cwd) == values
    assert list(cwd.iterdir()) == []


@settings(max_examples=100, deadline=None)
@given(items=st.lists(shell_text, max_size=5))
def test_arbitrary_list_arrives_element_wise(items, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bash")
    assert bash_args(render("{items}", {"items": items}), cwd) == items
