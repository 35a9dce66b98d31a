"""URLs shown to people: a storage or tracking URL with its password masked (`***`), in a URL
(`mask_url`) or inside free text such as a driver's error message (`mask_text`).

A password sits in one of two places, and both are masked, whatever characters it holds:

- the userinfo, ``scheme://user:password@host...``. The password runs from the first ':' after
  the user name to the last '@' before the host, so a password holding '@', ':', '/', '#', '%',
  quotes, '<' or a space is masked whole, percent-encoded or not;
- the query, ``?password=...`` or ``&password=...`` (also ``sslpassword``, ``passwd``, ``pwd``,
  ``secret``, ``token``, ``api_key``, any case). In a URL its value runs to the next
  ``&name=`` or the end; in free text, to the next '&', whitespace or quote (or a ':' before
  whitespace, as in "URL: cause").

Each pattern marks spans of the original string and every marked span becomes ``***``; where
two readings of an odd URL disagree (a query password holding '@', say), their union is
masked, so the password never shows, at worst with some of the URL around it.

In free text a URL ends at whitespace or a quote; a password holding a space is masked there
when its URL is given (``mask_text(text, url)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"


def _userinfo(head: str, stop: str) -> re.Pattern[str]:
    """`head` (scheme and user name) ':' `password` '@', where no part crosses a `stop`
    character; the password, greedy, runs to the last '@' before one."""
    password = rf"[^{stop}]+" if stop else r".+"
    return re.compile(rf"(?P<head>{head}):(?P<password>{password})@", re.DOTALL)


# One URL: the whole string. The scheme may be missing or mistyped (a spec's error shows what
# was typed): 'user:password@host' and 'scheme:user:password@host' are masked too; without
# '://' a ':' followed by '//' is a scheme's, not a password's.
_IN_URL = _userinfo(rf"{_SCHEME}[^:/@]*|(?:[A-Za-z][A-Za-z0-9+.-]*:(?!//))?[^:/@]*(?=:(?!//))",
                    "")
# Free text: each URL, from its scheme to the next whitespace or quote.
_IN_TEXT = _userinfo(rf"\b{_SCHEME}[^:/@\s'\"<>]*", r"\s'\"<>")

# A query parameter that holds a secret: libpq's password and sslpassword, and the usual names.
_SECRET_KEY = r"[\w.-]*(?:password|passwd|pwd|secret|token)|api_?key|pass"
_QUERY_KEY = rf"(?i:[?&;](?P<key>{_SECRET_KEY})=)"
# In a URL the value runs to the next parameter ('&name=') or the end of the string.
_QUERY_IN_URL = re.compile(rf"{_QUERY_KEY}(?P<password>(?:[^&]|&(?![\w.-]+=))+)", re.DOTALL)
# In free text, to the next '&', whitespace or quote, or a ':' before whitespace ("URL: cause").
_QUERY_IN_TEXT = re.compile(rf"{_QUERY_KEY}(?P<password>(?:[^&\s'\"<>:]|:(?!\s|$))+)")

MASK = "***"


def _spans(patterns: Iterable[re.Pattern[str]], text: str, *, whole: bool = False) -> list:
    """The (start, end) of every password the patterns find in `text`; `whole`: the userinfo
    pattern must start at the beginning (`text` is one URL)."""
    spans = []
    for pattern in patterns:
        found = [pattern.match(text)] if whole and pattern is _IN_URL else pattern.finditer(text)
        spans += [m.span("password") for m in found if m is not None]
    return spans


def _masked(text: str, spans: list) -> str:
    """`text` with each span, overlapping ones merged, replaced by ``***``."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces, at = [], 0
    for start, end in merged:
        pieces += [text[at:start], MASK]
        at = end
    return "".join(pieces) + text[at:]


def mask_url(url: str) -> str:
    """`url` with its password (userinfo or query) replaced by ***, for anything printed,
    logged or tracked."""
    return _masked(url, _spans((_IN_URL, _QUERY_IN_URL), url, whole=True))


def _passwords(url: str) -> set[str]:
    """`url`'s passwords as they may be written: as typed, percent-decoded and -encoded."""
    found = _IN_URL.match(url)
    values = [found.group("password")] if found else []
    values += [m.group("password") for m in _QUERY_IN_URL.finditer(url)]
    forms = set()
    for value in values:
        for plain in (value, unquote(value), unquote_plus(value)):
            forms |= {plain, quote(plain, safe=""), quote_plus(plain, safe="")}
    return {form for form in forms if form}


def mask_text(text: str, url: str | None = None) -> str:
    """`text` (an error message, a spec's text) with the password of every URL in it masked,
    and `url`'s passwords wherever they stand as one (``:password@`` or ``password=...``, as
    typed or percent-encoded), even where the URL in the text does not end where `mask_url`
    would say. Only password fields: a password ``o`` does not turn "connection refused" into
    "c***nnecti***n refused"."""
    spans = _spans((_IN_TEXT, _QUERY_IN_TEXT), text)
    for form in _passwords(url) if url else ():
        quoted = re.escape(form)
        known = (rf":(?P<password>{quoted})@", rf"{_QUERY_KEY}(?P<password>{quoted})")
        spans += _spans((re.compile(pattern) for pattern in known), text)
    return _masked(text, spans)
