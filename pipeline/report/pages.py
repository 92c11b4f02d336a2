"""Small HTML pages of tables, as `snakemake --report` shows them inline (the report tables, the tracked runs)."""
from __future__ import annotations

import html

import pandas as pd

from pipeline.io import atomic_path

STYLE = """body{font-family:system-ui,sans-serif;font-size:14px;margin:1em;color:#1e293b}
table{border-collapse:collapse;margin:0 0 1.5em}th,td{padding:3px 10px;border-bottom:1px solid #e2e8f0;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f1f5f9}h2{font-size:16px;margin:1em 0 .4em}"""


def section(title: str, table: pd.DataFrame, note: str = "", index: bool = True) -> str:
    body = table.to_html(float_format=lambda value: f"{value:.4f}", index=index, border=0)
    return f"<h2>{html.escape(title)}</h2>" + (f"<p>{html.escape(note)}</p>" if note else "") + body


def write_page(parts: list[str], path) -> None:
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>" \
           + "".join(parts) + "</body></html>\n"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
