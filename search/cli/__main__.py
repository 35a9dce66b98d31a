"""`python -m search.cli`: the same as the `fer-search` command."""

from search.cli.main import entry

entry()
