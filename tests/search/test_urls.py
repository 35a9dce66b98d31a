"""search.urls: a password in a URL, or in a URL inside free text, is masked (`***`); nothing
else in the URL or the text changes."""

from __future__ import annotations

import pytest

from search.urls import mask_text, mask_url

# (url, its password or None, the URL as shown)
URLS = [
    ("postgresql+psycopg2://fer:s3cret@db:5432/optuna", "s3cret",
     "postgresql+psycopg2://fer:***@db:5432/optuna"),
    ("postgresql://u:p@ss@db/x", "p@ss", "postgresql://u:***@db/x"),
    ("postgresql://u:p:ss@db/x", "p:ss", "postgresql://u:***@db/x"),
    ("postgresql://u:pa/ss@db/x", "pa/ss", "postgresql://u:***@db/x"),
    ("postgresql://u:100%sure@db/x", "100%sure", "postgresql://u:***@db/x"),
    ("postgresql://u:pa#ss@db/x", "pa#ss", "postgresql://u:***@db/x"),
    ("postgresql://u:my pass word@db/x", "my pass word", "postgresql://u:***@db/x"),
    ("postgresql://u:a@b:c/d%e#f g@db:5432/x?sslmode=require", "a@b:c/d%e#f g",
     "postgresql://u:***@db:5432/x?sslmode=require"),
    ("postgresql://u:p%40ss%3A%2F%23%25%20x@db/x", "p%40ss%3A%2F%23%25%20x",
     "postgresql://u:***@db/x"),
    ("postgresql://:s3cret@db/x", "s3cret", "postgresql://:***@db/x"),
    # mistyped URLs (no scheme, no '//'), as a spec's error shows them
    ("u:s3cret@db/x", "s3cret", "u:***@db/x"),
    ("postgres:user:s3cret@db", "s3cret", "postgres:user:***@db"),
    ("http://admin:s3cr:et@mlflow:5000", "s3cr:et", "http://admin:***@mlflow:5000"),
    ("https://user:pa ss@mlflow.example.org/api?x=1", "pa ss",
     "https://user:***@mlflow.example.org/api?x=1"),
    # issue 30: quotes, '<', unicode, a password starting '//', and passwords in the query
    ("postgresql://u:it's \"<q>\"@db/x", "it's \"<q>\"", "postgresql://u:***@db/x"),
    ("postgresql://u:p\u00e4ssw\u00f6rd\U0001f511@db/x", "p\u00e4ssw\u00f6rd\U0001f511",
     "postgresql://u:***@db/x"),
    ("postgresql://fer://x@db/x", "//x", "postgresql://fer:***@db/x"),
    ("postgresql://fer@db/x?password=S3c retD", "S3c retD", "postgresql://fer@db/x?password=***"),
    ("postgresql://fer@db/x?sslmode=require&password=s3cret&application_name=w", "s3cret",
     "postgresql://fer@db/x?sslmode=require&password=***&application_name=w"),
    ("postgresql://fer@db/x?PASSWORD=p%40ss%20w%23", "p%40ss%20w%23",
     "postgresql://fer@db/x?PASSWORD=***"),
    ("postgresql://fer:pw1@db/x?sslmode=verify-full&sslpassword=k3yfile", "k3yfile",
     "postgresql://fer:***@db/x?sslmode=verify-full&sslpassword=***"),
    ("postgresql://db:5432/x?password=p@ss", "p@ss", "postgresql://db:***"),  # both readings
    ("http://mlflow:5000/?token=abc123", "abc123", "http://mlflow:5000/?token=***"),
    # no password: unchanged
    ("postgresql://fer@db/x?sslmode=require&application_name=w", None,
     "postgresql://fer@db/x?sslmode=require&application_name=w"),
    ("postgresql://u@db/x", None, "postgresql://u@db/x"),
    ("postgresql://db:5432/x", None, "postgresql://db:5432/x"),
    ("postgresql://u:@db/x", None, "postgresql://u:@db/x"),
    ("sqlite:///studies/optuna.db", None, "sqlite:///studies/optuna.db"),
    ("sqlite:////abs/path/optuna.db", None, "sqlite:////abs/path/optuna.db"),
    ("sqlite:///a@b:c.db", None, "sqlite:///a@b:c.db"),
    ("sqlite://", None, "sqlite://"),
    ("http://mlflow:5000", None, "http://mlflow:5000"),
    ("file:///tmp/mlruns", None, "file:///tmp/mlruns"),
    ("", None, ""),
]


@pytest.mark.parametrize(("url", "password", "shown"), URLS)
def test_a_url_loses_its_password_and_nothing_else(url, password, shown):
    assert mask_url(url) == shown
    if password:
        assert password not in mask_url(url)


@pytest.mark.parametrize(("url", "password", "shown"), URLS)
def test_a_url_inside_a_driver_message_loses_its_password_and_nothing_else(url, password,
                                                                           shown):
    """In free text, with the URL known (a storage's own error) or not (any error line)."""
    text = f"(psycopg2.OperationalError) could not connect to {url}: Connection refused\n" \
           f"(Background on this error at: https://sqlalche.me/e/20/e3q8)"
    expected = text.replace(url, shown) if url else text
    assert mask_text(text, url) == expected
    if " " not in (password or "") and "://" in url:  # a URL in text ends at a space
        assert mask_text(text) == expected


@pytest.mark.parametrize(("text", "url", "expected"), [
    ("connection refused", "postgresql://u:o@h/db", "connection refused"),
    ('FATAL: password for "u" is wrong', "postgresql://u:u@h/db",
     'FATAL: password for "u" is wrong'),
    ("cannot open postgresql://u:o@h/db: refused", "postgresql://u:o@h/db",
     "cannot open postgresql://u:***@h/db: refused"),
    # the URL given percent-encoded, the message showing it decoded (or the other way round)
    ("at postgresql://u:p@ss w@h/db", "postgresql://u:p%40ss%20w@h/db",
     "at postgresql://u:***@h/db"),
    ("at postgresql://u:p%40ss%20w@h/db", "postgresql://u:p@ss w@h/db",
     "at postgresql://u:***@h/db"),
    ("postgresql+psycopg2://u:o@127.0.0.1:1/db: connection refused", None,
     "postgresql+psycopg2://u:***@127.0.0.1:1/db: connection refused"),
    ("http://admin:s3cr:et@mlflow:5000/api failed", None,
     "http://admin:***@mlflow:5000/api failed"),
    ("'postgresql://u:p@ss@db/x' and 'sqlite:///a.db'", None,
     "'postgresql://u:***@db/x' and 'sqlite:///a.db'"),
    ('two: "postgresql://a:x1@h/d", http://b:y2@m:5000 (both)', None,
     'two: "postgresql://a:***@h/d", http://b:***@m:5000 (both)'),
    ("storage: postgresql://optuna:s3cret@db/optuna\nseed: 3\n", None,
     "storage: postgresql://optuna:***@db/optuna\nseed: 3\n"),
    ("no URL: 10:30 user@example.org", None, "no URL: 10:30 user@example.org"),
    # a query's password: known (spaces and all) or not
    ("cannot open postgresql://u@h/db?password=S3c retD: refused",
     "postgresql://u@h/db?password=S3c retD",
     "cannot open postgresql://u@h/db?password=***: refused"),
    ("at postgresql://u@h/db?password=S3c%20retD", "postgresql://u@h/db?password=S3c retD",
     "at postgresql://u@h/db?password=***"),
    ("postgresql://u@h/db?a=1&password=s3cret&b=2: refused", None,
     "postgresql://u@h/db?a=1&password=***&b=2: refused"),
    ("storage: postgresql://u@h/db?password=***: refused", None,
     "storage: postgresql://u@h/db?password=***: refused"),  # masked twice: the same
    ("postgresql://u@h/db has no password", None, "postgresql://u@h/db has no password"),
    ("sqlite:///a.db: unable to open database file", "sqlite:///a.db",
     "sqlite:///a.db: unable to open database file"),
])
def test_free_text_loses_passwords_and_nothing_else(text, url, expected):
    assert mask_text(text, url) == expected
