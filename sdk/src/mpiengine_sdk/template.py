"""Shell command templates whose substituted values cannot inject shell code.

A template is ``str.format`` syntax cut down to what is safe to reason about: ``{name}`` with
``name`` a Python identifier, and ``{{``/``}}`` for literal braces. Every substituted value is
passed through ``shlex.quote``, so ``{path}`` given ``"a b; rm -rf /"`` arrives in the command as
one word with exactly that text. A caller who wants shell syntax from a value (a pipeline, a
glob) names it in ``raw``; nothing is ever inserted unquoted by accident.

Positional fields, attribute or index access, conversions and format specs are refused: each one
is a way to reach code or data the caller did not mean to substitute (``{a.__class__}``), and a
format spec applied before quoting could reintroduce shell syntax.
"""

from __future__ import annotations

import difflib
import shlex
import string
from collections.abc import Collection, Iterator, Mapping

from mpiengine_sdk.errors import TemplateError

__all__ = ["check_template", "check_values", "placeholders", "render", "render_word"]

_ALLOWED = (
    "placeholders are {name} with name a Python identifier; write {{ and }} for literal braces"
)
_FORMATTER = string.Formatter()


def placeholders(template: str) -> frozenset[str]:
    """The placeholder names of ``template``.

    Raises:
        TemplateError: the template is not a str or its syntax is not allowed.
    """
    return frozenset(name for _, name in _parse(template) if name is not None)


def check_template(template: str, raw: Collection[str] = ()) -> frozenset[str]:
    """Check ``template``'s syntax and that every ``raw`` name is one of its placeholders.

    Returns:
        The placeholder names.

    Raises:
        TemplateError: bad syntax, ``raw`` given as one string, or a ``raw`` name that the
            template does not use.
    """
    names = placeholders(template)
    _check_raw(raw, names)
    return names


def render(template: str, values: Mapping[str, object], raw: Collection[str] = ()) -> str:
    """Fill ``template`` with shell-quoted ``values``.

    Each value becomes ``shlex.quote(str(value))``; a list or tuple becomes its elements, each
    quoted, joined by spaces (an empty list: nothing). Names in ``raw`` are inserted verbatim
    (a list's elements joined by spaces): the caller asked for shell syntax by name.

    Returns:
        The rendered command text, for ``bash -c``.

    Raises:
        TemplateError: bad syntax, a placeholder without a value, a value without a
            placeholder, a ``raw`` name not in the template, or a value that cannot be a shell
            word (None, bytes, a nested list, text with a NUL character).
    """
    names = check_template(template, raw)
    check_values(names, values)
    verbatim = frozenset(raw)
    out: list[str] = []
    for literal, name in _parse(template):
        out.append(literal)
        if name is not None:
            out.append(_substitute(name, values[name], quote=name not in verbatim))
    return "".join(out)


def render_word(template: str, values: Mapping[str, object]) -> str:
    """Fill one argv element: values inserted verbatim, and the result stays one argument.

    No shell reads an argv element, so nothing needs quoting; a list value is refused because
    it would have to become several arguments or one with spaces, and either would surprise.
    The caller checks for missing and unused values across the whole argv.

    Raises:
        TemplateError: bad syntax, a missing value, or a value that cannot be an argument.
    """
    out: list[str] = []
    for literal, name in _parse(template):
        out.append(literal)
        if name is None:
            continue
        if name not in values:
            raise TemplateError(f"argv element {template!r} needs a value for {{{name}}}")
        value = values[name]
        if isinstance(value, list | tuple):
            raise TemplateError(
                f"{{{name}}} is a {type(value).__name__}, but an argv element takes one value; "
                "give each value its own argv element, or use a template string"
            )
        out.append(_word(name, value))
    return "".join(out)


def _parse(template: str) -> Iterator[tuple[str, str | None]]:
    """Yield (literal text, placeholder name or None), refusing anything but ``{name}``."""
    if not isinstance(template, str):
        raise TemplateError(f"a template must be a str, not {type(template).__name__}")
    if "\0" in template:
        raise TemplateError(f"template {template!r} contains a NUL character, which no shell takes")
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise TemplateError(f"template {template!r} is malformed ({exc}); {_ALLOWED}") from exc
    for literal, field, spec, conversion in parts:
        if field is None:
            yield literal, None
            continue
        if not field.isidentifier():
            raise TemplateError(f"template {template!r}: {_field_problem(field)}; {_ALLOWED}")
        if conversion is not None or spec:
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise TemplateError(
                f"template {template!r}: {{{shown}}} has a conversion or format spec; format the "
                f"value yourself before passing it; {_ALLOWED}"
            )
        yield literal, field


def _field_problem(field: str) -> str:
    if field == "" or field.isdigit():
        return f"positional field {{{field}}}; name it and pass the value by keyword"
    if "." in field or "[" in field:
        return f"{{{field}}} uses attribute or index access; pass the value itself by name"
    return f"{{{field}}} is not a Python identifier"


def _check_raw(raw: Collection[str], names: frozenset[str]) -> None:
    if isinstance(raw, str):
        raise TemplateError(f"raw must be a collection of names, e.g. [{raw!r}], not one string")
    unknown = sorted(str(name) for name in raw if name not in names)
    if unknown:
        raise TemplateError(
            f"raw names {unknown} are not placeholders of the template; "
            f"its placeholders are {sorted(names)}"
        )


def check_values(names: frozenset[str], values: Mapping[str, object]) -> None:
    """Check that ``values`` has exactly one value per placeholder in ``names``.

    Raises:
        TemplateError: a placeholder has no value, or a value has no placeholder.
    """
    missing = sorted(names - set(values))
    extra = sorted(str(key) for key in values if key not in names)
    if missing:
        text = (
            f"no value for placeholder(s) {missing}; pass them as keyword arguments "
            f"(the template uses {sorted(names)})"
        )
        if extra:
            text += f"; value(s) {extra} are not used by the template{_did_you_mean(extra, names)}"
        raise TemplateError(text)
    if extra:
        raise TemplateError(
            f"value(s) {extra} are not used by the template (it uses {sorted(names)})"
            f"{_did_you_mean(extra, names)}; remove them or add the placeholders"
        )


def _did_you_mean(extra: list[str], names: frozenset[str]) -> str:
    """``; did you mean {name} for nmae?`` for each unused value close to a placeholder."""
    hints = []
    for key in extra:
        close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
        if close:
            hints.append(f"{{{close[0]}}} for {key!r}")
    return f"; did you mean {', '.join(hints)}?" if hints else ""


def _substitute(name: str, value: object, *, quote: bool) -> str:
    if isinstance(value, list | tuple):
        words = [_word(name, item) for item in value]
        return " ".join(shlex.quote(w) for w in words) if quote else " ".join(words)
    word = _word(name, value)
    return shlex.quote(word) if quote else word


def _word(name: str, value: object) -> str:
    """``str(value)``, refusing values whose text would not be what the caller meant."""
    if value is None or isinstance(value, bytes | bytearray | list | tuple | dict | set):
        raise TemplateError(
            f"value for {{{name}}} is {type(value).__name__}; pass str, a number, a path, "
            "or a flat list of those"
        )
    text = str(value)
    if "\0" in text:
        raise TemplateError(f"value for {{{name}}} contains a NUL character, which no shell takes")
    return text
