"""containerd's filter syntax, for ``OverlaySnapshotter.walk(*filters)``.

A filter is a comma-separated list of selectors, all of which must match
(containerd ``filters.Parse``); several filters match when any one does
(``filters.ParseAll``)::

    selectors := selector ("," selector)*
    selector  := fieldpath [operator value]
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z0-9_-]+
    operator  := "==" | "!=" | "~="
    value     := quoted | [^\\s,]+
    quoted    := a Go string literal in "..."; after ~= also /.../ or |...|

Fields of a snapshot (containerd ``metadata/snapshot.go`` adaptSnapshot):
``kind`` (``view``, ``active``, ``committed``), ``name``, ``parent`` (always
present, ``""`` for a base), ``labels.K``. The rest of a label path is joined
with dots, so ``labels.a.b`` and ``labels."a.b"`` name the same key. Any other
field is absent.

Operators: a bare field path tests presence; ``==`` needs the field present
and equal; ``!=`` is true when the field is absent or differs; ``~=`` is an
unanchored search against the value (``""`` when absent, as containerd
does; pysnap drops empty label values, so absent and empty are one state).
Kinds compare without regard to case (``kind==Committed``).

Regular expressions are RE2's (the ``google-re2`` package, imported as
``re2``), the syntax and linear-time matching of Go's ``regexp`` that
containerd uses: Python's backtracking ``re`` would take minutes over
``^(a+)+$`` and a 33-character name, holding the GIL inside a read
transaction. There is no fallback to ``re``. A pattern that does not compile
matches nothing, as in containerd 1.x (which logs and returns false); RE2's
own log line is switched off. ``\\C`` (any byte), which RE2 accepts and Go
rejects, does not compile either, nor does a pattern that is not valid UTF-8.

An empty filter string matches everything, so it makes the whole OR true.
Whitespace between tokens is skipped. A malformed filter raises
:class:`FilterSyntaxError`, an ``InvalidArgumentError`` naming the filter and
the position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import re2

from .errors import InvalidArgumentError
from .types import Info, Kind

__all__ = ["FilterSyntaxError", "Predicate", "Selector", "compile_filters", "parse"]

Predicate = Callable[[Info], bool]

OPERATORS = ("==", "!=", "~=")
PRESENT = "?"  # the operator of a bare field path, as containerd prints it

_KIND_NAMES = {Kind.VIEW: "view", Kind.ACTIVE: "active", Kind.COMMITTED: "committed"}

# Token kinds of the scanner (containerd filters/scanner.go).
_EOF, _QUOTED, _VALUE, _FIELD, _SEP, _OP = range(6)
_QUOTES = '"/|'  # "/" and "|" delimit regular expressions after ~= only
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_HEX = "0123456789abcdefABCDEF"
#: Characters of the filter shown each side of a syntax error.
_CONTEXT = 40


class FilterSyntaxError(InvalidArgumentError):
    """A malformed filter: ``filter`` is its text, ``position`` the index of the fault."""

    def __init__(self, text: str, position: int, message: str) -> None:
        self.filter = text
        self.position = position
        self.reason = message
        # containerd marks the spot as [before >|x|< after]; so do we, with at
        # most _CONTEXT characters each side: the message crosses gRPC in a
        # header, which a long filter quoted whole would overflow.
        before = text[max(0, position - _CONTEXT) : position]
        if position > _CONTEXT:
            before = "..." + before
        after = text[position + 1 : position + 1 + _CONTEXT]
        if len(text) > position + 1 + _CONTEXT:
            after += "..."
        where = f"{before} >|{text[position : position + 1]}|< {after}"
        what = repr(text) if len(text) <= 2 * _CONTEXT else f"of {len(text)} characters"
        super().__init__(f"invalid filter {what} at position {position}: {message} [{where}]")


class Selector(NamedTuple):
    """One parsed selector: ``labels."a.b"!=x`` is ``(("labels", "a.b"), "!=", "x")``."""

    fieldpath: tuple[str, ...]
    operator: str  # "?" (present), "==", "!=" or "~="
    value: str = ""


class _Token(NamedTuple):
    kind: int
    text: str  # the raw text; for _QUOTED, the raw literal with its quotes
    pos: int
    value: str = ""  # for _QUOTED, the decoded string


class _Scanner:
    """Tokens of one filter string. After an operator comes a value: any run
    of characters but ``,`` and space, unless it starts with a quote."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.after_operator = False

    def error(self, pos: int, message: str) -> FilterSyntaxError:
        return FilterSyntaxError(self.text, pos, message)

    def peek(self) -> _Token:
        pos, after = self.pos, self.after_operator
        try:
            return self.next()
        finally:
            self.pos, self.after_operator = pos, after

    def next(self) -> _Token:
        text, n = self.text, len(self.text)
        pos = self.pos
        while pos < n and text[pos].isspace():
            pos += 1
        self.pos = start = pos
        if pos >= n:
            return _Token(_EOF, "", pos)
        ch = text[pos]
        if ch == "\0":
            raise self.error(pos, "unexpected NUL")
        if ch in _QUOTES:
            value = self._quoted(ch)
            self.after_operator = False
            return _Token(_QUOTED, text[start : self.pos], start, value)
        if ch in ",.":
            self.pos += 1
            self.after_operator = False
            return _Token(_SEP, ch, start)
        if ch in "=!~":
            while pos < n and text[pos] in "=!~":
                pos += 1
            self.pos = pos
            self.after_operator = True
            return _Token(_OP, text[start:pos], start)
        if self.after_operator:
            while pos < n and _is_value_char(text[pos]):
                pos += 1
            if pos > start:
                self.pos = pos
                self.after_operator = False
                return _Token(_VALUE, text[start:pos], start)
        elif _is_field_char(ch):
            while pos < n and _is_field_char(text[pos]):
                pos += 1
            self.pos = pos
            return _Token(_FIELD, text[start:pos], start)
        raise self.error(pos, f"unexpected character {ch!r}")

    def _quoted(self, quote: str) -> str:
        """Decode a Go-style quoted literal starting at self.pos (containerd
        filters/quote.go: strconv.Unquote with / and | as extra delimiters).
        ``\\x`` and octal escapes give bytes, joined as UTF-8 like Go does."""
        text, n = self.text, len(self.text)
        open_pos = self.pos
        pos = open_pos + 1
        out: list[str] = []
        raw = bytearray()  # pending bytes from \x and octal escapes

        def flush() -> None:
            if raw:
                out.append(raw.decode("utf-8", "surrogateescape"))
                raw.clear()

        while True:
            if pos >= n or text[pos] == "\n":
                raise self.error(open_pos, "quoted literal not terminated")
            ch = text[pos]
            if ch == quote:
                break
            if ch == "\0":
                raise self.error(pos, "unexpected NUL")
            if ch != "\\":
                flush()
                out.append(ch)
                pos += 1
                continue
            esc_pos = pos
            pos += 1
            if pos >= n:
                raise self.error(open_pos, "quoted literal not terminated")
            c = text[pos]
            pos += 1
            if c in _SIMPLE_ESCAPES or c == quote:
                flush()
                out.append(_SIMPLE_ESCAPES.get(c, c))
            elif c in "01234567":
                digits = text[pos - 1 : pos + 2]
                if len(digits) < 3 or any(d not in "01234567" for d in digits):
                    raise self.error(esc_pos, "illegal octal escape sequence")
                value = int(digits, 8)
                if value > 255:
                    raise self.error(esc_pos, "octal escape value > 255")
                raw.append(value)
                pos += 2
            elif c in "xuU":
                width = {"x": 2, "u": 4, "U": 8}[c]
                digits = text[pos : pos + width]
                if len(digits) < width or any(d not in _HEX for d in digits):
                    raise self.error(esc_pos, "illegal hexadecimal escape sequence")
                value = int(digits, 16)
                pos += width
                if c == "x":
                    raw.append(value)
                else:
                    if value > 0x10FFFF:
                        raise self.error(esc_pos, "escape sequence is an invalid code point")
                    flush()
                    # Go encodes a surrogate half as U+FFFD (utf8.EncodeRune).
                    out.append("\ufffd" if 0xD800 <= value <= 0xDFFF else chr(value))
            else:
                raise self.error(esc_pos, f"illegal escape sequence \\{c}")
        flush()
        self.pos = pos + 1
        return "".join(out)


def _is_field_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch in "-_")


def _is_value_char(ch: str) -> bool:
    # Go's isValueRune: not a comma, not a space, a graphic character.
    return ch != "," and not ch.isspace() and ch.isprintable()


def parse(text: str) -> tuple[Selector, ...]:
    """Parse one filter (selectors joined by commas) into its selectors.

    An empty or blank filter gives ``()``, which matches everything.

    Raises:
        FilterSyntaxError (an InvalidArgumentError): the filter is malformed.
        InvalidArgumentError: ``text`` is not a str.
    """
    if not isinstance(text, str):  # bytes or None would fail deep in the scanner
        raise InvalidArgumentError(f"filter must be a str, not {type(text).__name__}")
    if not text.strip():
        return ()
    scanner = _Scanner(text)
    selectors = [_selector(scanner)]
    while True:
        tok = scanner.next()
        if tok.kind == _EOF:
            return tuple(selectors)
        if tok.kind == _SEP and tok.text == ",":
            selectors.append(_selector(scanner))
            continue
        raise scanner.error(tok.pos, f"unexpected input {tok.text!r}, expected ','")


def _selector(scanner: _Scanner) -> Selector:
    path = [_field(scanner)]
    while (tok := scanner.peek()).kind == _SEP and tok.text == ".":
        scanner.next()
        path.append(_field(scanner))
    tok = scanner.peek()
    if tok.kind == _EOF or (tok.kind == _SEP and tok.text == ","):
        return Selector(tuple(path), PRESENT)
    tok = scanner.next()
    if tok.kind != _OP:
        raise scanner.error(tok.pos, 'expected an operator ("==", "!=", "~=") or ","')
    if tok.text not in OPERATORS:
        raise scanner.error(tok.pos, f"unsupported operator {tok.text!r}")
    operator = tok.text
    tok = scanner.next()
    if tok.kind in (_VALUE, _FIELD):
        return Selector(tuple(path), operator, tok.text)
    if tok.kind == _QUOTED:
        if tok.text[0] != '"' and operator != "~=":
            raise scanner.error(
                tok.pos, f"invalid quote {tok.text[0]!r}: only ~= takes /.../ or |...|"
            )
        return Selector(tuple(path), operator, tok.value)
    raise scanner.error(tok.pos, "expected a value or a quoted string")


def _field(scanner: _Scanner) -> str:
    tok = scanner.next()
    if tok.kind == _FIELD:
        return tok.text
    if tok.kind == _QUOTED:
        if tok.text[0] != '"':
            raise scanner.error(tok.pos, f"invalid quote {tok.text[0]!r} in a field path")
        return tok.value
    raise scanner.error(tok.pos, "expected a field name or a quoted string")


def _getter(path: Sequence[str]) -> Callable[[Info], str | None]:
    """How to read a field path from an Info: its value, or None when absent."""
    head = path[0]
    if head == "kind":
        return lambda info: _KIND_NAMES[info[0]]
    if head == "name":
        return lambda info: info[1]
    if head == "parent":
        return lambda info: info[2]
    if head == "labels" and len(path) > 1:
        key = ".".join(path[1:])
        return lambda info: info[3].get(key)
    return lambda info: None


def _never(info: Info) -> bool:
    return False


def _always(info: Info) -> bool:
    return True


#: What compile_filters() returns when every Info matches (walk() then skips the calls).
MATCH_ALL = _always


def _compile_selector(sel: Selector) -> Predicate:
    get = _getter(sel.fieldpath)
    op, want = sel.operator, sel.value
    if sel.fieldpath[0] == "kind" and op in ("==", "!="):
        want = want.lower()
    if op == PRESENT:
        return lambda info: get(info) is not None
    if op == "==":
        return lambda info: get(info) == want
    if op == "!=":
        return lambda info: get(info) != want
    search = compile_regexp(want)
    if search is None:
        return _never
    return lambda info: search(get(info) or "")


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is an answer ("no match"), not a log line


def compile_regexp(pattern: str) -> Callable[[str], bool] | None:
    """Whether a str holds a match of ``pattern``, compiled as Go's regexp would;
    None when Go's ``regexp.Compile`` fails (containerd: the selector matches nothing)."""
    if _has_any_byte(pattern):
        return None
    try:
        # As bytes: the wrapper's str path maps every offset back to
        # characters, 8x the cost of the search (11 us against 1.4 us).
        search = re2.compile(pattern.encode(), _RE2_OPTIONS).search
    except (re2.error, UnicodeEncodeError):  # RE2's error; a lone surrogate is not UTF-8
        return None
    # surrogateescape: bytes that are not UTF-8 go back as they came, as in a Go string
    return lambda text: search(text.encode("utf-8", "surrogateescape")) is not None


def _has_any_byte(pattern: str) -> bool:
    """Whether ``pattern`` uses ``\\C`` outside ``\\Q...\\E`` (RE2 accepts it, Go does not)."""
    i, n = 0, len(pattern)
    while True:
        i = pattern.find("\\", i)
        if i < 0 or i + 1 >= n:
            return False
        nxt = pattern[i + 1]
        if nxt == "C":
            return True
        if nxt == "Q":  # literal text up to \E, or to the end
            end = pattern.find("\\E", i + 2)
            if end < 0:
                return False
            i = end
        i += 2


def _all_of(preds: Sequence[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    items = tuple(preds)

    def match(info: Info) -> bool:
        for p in items:
            if not p(info):
                return False
        return True

    return match


def compile_filters(*filters: str) -> Predicate:
    """One predicate on Info for containerd filters: any filter matching is a match.

    No filters, or any empty one, match every Info. Regular expressions are
    compiled here, once.

    Raises:
        FilterSyntaxError (an InvalidArgumentError): a filter is malformed.
    """
    parsed = [parse(text) for text in filters]  # every filter is checked
    if not parsed or any(not sels for sels in parsed):
        return _always
    alternatives = tuple(_all_of([_compile_selector(s) for s in sels]) for sels in parsed)
    if len(alternatives) == 1:
        return alternatives[0]

    def match(info: Info) -> bool:
        for alt in alternatives:
            if alt(info):
                return True
        return False

    return match
