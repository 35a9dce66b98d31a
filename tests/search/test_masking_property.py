"""Passwords never show, whatever they hold (issue 30): for passwords drawn from a wide
alphabet (spaces, quotes, '<', '@', '#', '%', '/', ':', '&', control characters, any unicode),
in a URL's userinfo or its query (``?password=``, ``&password=``), as typed or percent-encoded,
neither the password nor any 4-character piece of it that is not elsewhere in the text shows in
`mask_url`'s or `mask_text`'s output, nor in a spec's `redacted_text`, which still reads back as
the same spec with its URLs masked."""

from __future__ import annotations

from urllib.parse import quote

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from search.spec.loader import spec_from_text
from search.urls import mask_text, mask_url
from tests.search.studyhelp import SPEC

PIECE = 4
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Every character but surrogates (not text) and NUL (no driver takes it), weighted towards the
# ones that end URLs, quote YAML or start comments.
AWKWARD = " \t'\"<>@#%/:?&=+;\\*!|{}[],`~$^\u00e9\u4e2d\U0001f511\u00a0\u2028\n"
CHARACTERS = st.one_of(st.sampled_from(AWKWARD),
                       st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
PASSWORDS = st.text(CHARACTERS, min_size=1, max_size=24)
QUERY_KEYS = st.sampled_from(["password", "PASSWORD", "sslpassword", "pwd"])
SCHEMES = st.sampled_from(["postgresql", "postgresql+psycopg2", "mysql+pymysql", "http",
                           "https"])

# A form of the URL, with {pw} where the password goes.
USERINFO = "{scheme}://fer:{pw}@db.example.org:5432/optuna"
QUERY_FIRST = "{scheme}://fer@db.example.org:5432/optuna?{key}={pw}&application_name=w1"
QUERY_LATER = "{scheme}://fer@db.example.org/optuna?sslmode=require&{key}={pw}"


def _written(password: str, encoded: bool, query: bool) -> str:
    """The password as it stands in the URL: percent-encoded, or as typed (a raw '&' would
    end a query value for any driver, so a query's raw password has none)."""
    if encoded:
        return quote(password, safe="")
    return password.replace("&", "%26") if query else password


def _leaks(shown: str, secrets: list[str], rest: str, expected: str) -> list[str]:
    """Each secret, and each 4-character piece of one, that `shown` holds although neither the
    text around the password (`rest`) nor the masked text we expect holds it."""
    found = []
    for secret in secrets:
        pieces = {secret} | {secret[i:i + PIECE] for i in range(len(secret) - PIECE + 1)}
        found += [piece for piece in pieces
                  if piece in shown and piece not in rest and piece not in expected]
    return found


def _check(form: str, scheme: str, key: str, password: str, encoded: bool) -> None:
    query = "{key}" in form
    written = _written(password, encoded, query)
    url = form.format(scheme=scheme, key=key, pw=written)
    rest = form.format(scheme=scheme, key=key, pw="")
    expected = form.format(scheme=scheme, key=key, pw="***")
    secrets = [password, written]
    shown = mask_url(url)
    assert "***" in shown
    assert not _leaks(shown, secrets, rest, expected), shown
    # A driver's message naming the URL, the URL given (a storage's own error).
    text = f"(psycopg2.OperationalError) could not connect to {url}: Connection refused"
    assert not _leaks(mask_text(text, url), secrets, text.replace(url, rest), expected)
    # Without the URL, free text ends a URL at whitespace or a quote: those passwords aside.
    if not any(c.isspace() or c in "'\"<>&" for c in written):
        assert not _leaks(mask_text(text), secrets, text.replace(url, rest), expected)


@SETTINGS
@given(scheme=SCHEMES, password=PASSWORDS, encoded=st.booleans())
@example(scheme="postgresql", password="S3c retD", encoded=False)
@example(scheme="postgresql", password="//x@y", encoded=False)
@example(scheme="postgresql", password="a'b\"c<d@e#f%g", encoded=False)
def test_a_userinfo_password_never_shows(scheme, password, encoded):
    _check(USERINFO, scheme, "", password, encoded)


@SETTINGS
@given(scheme=SCHEMES, key=QUERY_KEYS, password=PASSWORDS, encoded=st.booleans(),
       later=st.booleans())
@example(scheme="postgresql", key="password", password="S3c retD", encoded=False, later=False)
@example(scheme="postgresql", key="password", password="p@ss word", encoded=False, later=True)
def test_a_query_password_never_shows(scheme, key, password, encoded, later):
    _check(QUERY_LATER if later else QUERY_FIRST, scheme, key, password, encoded)


def _spec_text(storage: str, tracking_uri: str, comment: str | None, style: str) -> str:
    """A valid spec whose storage and tracking URIs hold the password, quoted as `style`
    ('"', "'" or None for YAML's choice), with a commented-out storage line above."""
    def scalar(value: str) -> str:
        if not value.isprintable():  # YAML folds some (U+0085, U+2028) unless escaped
            return yaml.safe_dump(value, default_style='"').rstrip("\n")
        if style == "'":
            return "'" + value.replace("'", "''") + "'"
        if style == '"':
            return yaml.safe_dump(value, default_style='"', allow_unicode=True).rstrip("\n")
        return yaml.safe_dump(value, allow_unicode=True).removesuffix("\n...\n").rstrip("\n")

    lines = ["# a study for the property tests"]
    if comment is not None:
        lines.append(f"# storage: {comment}  (the old database)")
    lines.append(yaml.safe_dump(SPEC, sort_keys=False, allow_unicode=True).rstrip("\n"))
    lines.append(f"storage: {scalar(storage)}  # the shared one")
    lines.append(f"tracking_uri: {scalar(tracking_uri)}")
    return "\n".join(lines) + "\n"


@SETTINGS
@given(password=PASSWORDS, query=st.booleans(), style=st.sampled_from(['"', "'", None]),
       key=QUERY_KEYS)
@example(password="S3c retD", query=False, style='"', key="password")
@example(password="S3c retD", query=True, style=None, key="password")
@example(password="it's<\"ok\">", query=False, style="'", key="password")
def test_the_redacted_spec_never_holds_the_password(password, query, style, key):
    form = QUERY_LATER if query else USERINFO
    written = _written(password, False, query)
    storage = form.format(scheme="postgresql", key=key, pw=written)
    tracking_uri = f"http://admin:{written}@mlflow.example.org:5000"
    comment = storage if storage.isprintable() else None
    text = _spec_text(storage, tracking_uri, comment, style)
    spec = spec_from_text(text, "studies/prop.yaml")
    assert spec.storage == storage

    redacted = spec.redacted_text
    rest = _spec_text(form.format(scheme="postgresql", key=key, pw=""),
                      "http://admin:@mlflow.example.org:5000",
                      comment and form.format(scheme="postgresql", key=key, pw=""), style)
    expected = _spec_text(mask_url(storage), mask_url(tracking_uri),
                          comment and mask_url(comment), style)
    assert not _leaks(redacted, [password, written], rest, expected), redacted
    # It is still the spec (what `promote` rebuilds from), its URLs masked, comments kept.
    again = spec_from_text(redacted, "studies/prop.yaml")
    assert again.storage == mask_url(storage)
    assert again.tracking_uri == mask_url(tracking_uri)
    assert "# a study for the property tests" in redacted
    assert "# the shared one" in redacted
