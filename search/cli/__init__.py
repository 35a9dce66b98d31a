"""The `fer-search` command: the parser (`main`), and thin command bodies grouped by noun (study,
inspect, model, tool, data), each calling the library; a command's module is imported when it
runs."""
