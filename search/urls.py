"""URLs shown to people: a storage or tracking URL with its password masked (`***`), in a URL
or inside free text (a driver's error message), by the URL's structure only."""

from __future__ import annotations

import re
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***, for anything printed, logged or tracked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        from search.spec.loader import mask_url_secrets

        return mask_url_secrets(url)


def mask_url_in_text(text: str, url: str) -> str:
    """Removes `url`'s password from a driver's error message: only where it stands as a
    password (`:password@`), never every occurrence of its letters (a password `o` must not
    turn "connection refused" into "c***nnecti***n refused")."""
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    if not password:
        return text
    for form in {str(password), quote(str(password), safe="")}:
        text = text.replace(f":{form}@", ":***@")
    return text


# `scheme://user:password@`: the password runs to the last '@' before the host's '/'.
_URL_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):[^/\s'\"]*@")


def mask_url_secrets_in(text: str) -> str:
    """Masks the password of every URL inside free text (error messages): the URL's own
    password field only, found by the URL's structure; the rest of the text is untouched."""
    return _URL_USERINFO.sub(lambda m: f"{m.group('head')}:***@", text)
