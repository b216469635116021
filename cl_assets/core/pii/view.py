"""The text as the detectors see it: escape sequences decoded, look-alike separators folded.

Logs and double-encoded JSON hold "Phone:\\n760-819-2468" with a literal backslash and "n",
HTML holds "&nbsp;" and "&#43;41", query strings "%2B41%2079": the escape glues the value
to a letter or hides its "+". Detecting on a decoded view, with each of its characters
mapped back to the escape it came from, lets every detector keep its word boundaries, and
a finding always covers whole escapes. Unicode dashes, dots and spaces (NBSP, thin space,
"–", "‧", ...) become their ASCII separator, one character for one, so offsets stay put.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

# Backslash escapes (one or more backslashes: JSON escaped once or twice), HTML character
# references and percent-encoded UTF-8.
_ESCAPE = re.compile(
    r"\\+(?:u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|[ntrfv])"
    r"|&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z]{2,8});"
    r"|%[0-7][0-9A-Fa-f]|%[C-Fc-f][0-9A-Fa-f](?:%[89ABab][0-9A-Fa-f]){1,3}"
)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_SEPARATORS = {
    **dict.fromkeys("\u00a0\u2007\u202f\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2008\u2009\u200a\u205f\u3000", " "),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
    **dict.fromkeys("\u2024\u00b7\u2027\u30fb\uff0e\uff65", "."),
    "\uff08": "(", "\uff09": ")", "\uff0b": "+",
}
_FOLD = str.maketrans(_SEPARATORS)
_FOLDABLE = re.compile("[" + "".join(_SEPARATORS) + "]")  # searched in C; `translate` is a Python loop


def _decode(token: str) -> str:
    """One escape as the character it stands for (itself where it stands for none)."""
    if token[0] == "\\":
        body = token.lstrip("\\")
        if body[0] in "ux":
            value = chr(int(body[1:], 16))
            return value if value.isprintable() or value in "\n\t\r" else " "
        return _SIMPLE[body[0]]
    if token[0] == "&":
        value = html.unescape(token)
        return value if len(value) == 1 else token
    return bytes.fromhex(token.replace("%", "")).decode("utf-8", "replace")


def may_hold_escapes(text: str) -> bool:
    return "\\" in text or "&" in text or "%" in text


def detection_view(text: str) -> tuple[str, Callable[[int, int], tuple[int, int]] | None]:
    """The view the detectors scan, and a map from a span of it back to a span of `text`
    (None when the view has the same offsets as `text`)."""
    view = text if text.isascii() or _FOLDABLE.search(text) is None else text.translate(_FOLD)
    if not may_hold_escapes(view):
        return view, None
    parts: list[str] = []
    starts: list[int] = []  # offset in `text` of each character of the view
    pos = 0
    for m in _ESCAPE.finditer(view):
        decoded = _decode(m.group())
        if len(decoded) != 1:
            continue
        start = m.start()
        parts.append(view[pos:start])
        starts.extend(range(pos, start))
        parts.append(decoded.translate(_FOLD))
        starts.append(start)
        pos = m.end()
    if not starts:
        return view, None
    parts.append(view[pos:])
    starts.extend(range(pos, len(view)))
    starts.append(len(view))

    def origin(start: int, end: int) -> tuple[int, int]:
        return starts[start], starts[end]

    return "".join(parts), origin
