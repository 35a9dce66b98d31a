"""The `fer-search` command: the parser (`main`), and thin command bodies grouped by noun (study,
registry, tools), each calling the library.
"""
