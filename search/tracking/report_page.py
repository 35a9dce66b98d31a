"""The report's interactive page: every plotly figure of a study on one HTML page, plotly.js
embedded once (with the first figure) rather than once per plot."""

from __future__ import annotations

import html

HTML_PAGE = "report.html"


def html_page(study_name: str, figures: list[tuple[str, object]]) -> str:
    """The page of `figures` (title, plotly figure), in their order."""
    parts = []
    for index, (title, figure) in enumerate(figures):
        body = figure.to_html(full_html=False, include_plotlyjs=index == 0)
        parts.append(f"<h2>{html.escape(title)}</h2>\n{body}")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(study_name)}: plots</title></head>\n<body style=\"font-family: "
        f"sans-serif\">\n<h1>Study {html.escape(study_name)}</h1>\n" + "\n".join(parts)
        + "\n</body></html>\n"
    )
