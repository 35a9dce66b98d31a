"""URLs shown to people: a storage or tracking URL with its password masked (`***`), in a URL
(`mask_url`) or inside free text such as a driver's error message (`mask_text`).

Both are built on one pattern, `scheme://user:password@host...`, and replace the password and
nothing else. The password runs from the first ':' after the user name to the last '@' before
the host, as SQLAlchemy reads a URL, so a password holding '@', ':', '/', '#', '%' or a space
is masked whole, percent-encoded or not. In free text a URL ends at whitespace or a quote; a
password holding a space is masked there when its URL is given (``mask_text(text, url)``).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*://"


def _userinfo(scheme: str, stop: str) -> re.Pattern[str]:
    """`head` (scheme and user name) ':' `password` '@', where no part crosses a `stop`
    character; the password, greedy, runs to the last '@' before one."""
    return re.compile(rf"(?P<head>{scheme}[^:/@{stop}]*):(?!//)(?P<password>[^{stop}]+)@")


# One URL: the whole string. The scheme may be missing or mistyped (a spec's error shows what
# was typed): 'user:password@host' and 'scheme:user:password@host' are masked too.
_IN_URL = _userinfo(rf"(?:{_SCHEME}|[A-Za-z][A-Za-z0-9+.-]*:(?!//))?", r"\r\n")
# Free text: each URL, from its scheme to the next whitespace or quote.
_IN_TEXT = _userinfo(rf"\b{_SCHEME}", r"\s'\"<>")


def _mask(match: re.Match[str]) -> str:
    return f"{match.group('head')}:***@"


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***, for anything printed, logged or tracked."""
    found = _IN_URL.match(url)
    return url if found is None else _mask(found) + url[found.end():]


def mask_text(text: str, url: str | None = None) -> str:
    """`text` (an error message, a spec's text) with the password of every URL in it masked,
    and `url`'s password wherever it stands as one (``:password@``, as typed or
    percent-encoded), even where the URL in the text does not end where `mask_url` would
    say. Only the password field: a password ``o`` does not turn "connection refused" into
    "c***nnecti***n refused"."""
    found = _IN_URL.match(url) if url else None
    if found:
        password = found.group("password")
        for form in sorted({password, unquote(password), quote(unquote(password), safe="")},
                           key=len, reverse=True):
            text = text.replace(f":{form}@", ":***@")
    return _IN_TEXT.sub(_mask, text)
