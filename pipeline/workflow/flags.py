"""Command-line flags from named values, for rules' shell lines: one place that quotes, instead of strings assembled
in each rule's params."""
from __future__ import annotations

import shlex


def flags(**named) -> str:
    """`flags(cv_metrics_in="a b", snapshots=["x", "y"])` -> "--cv-metrics-in 'a b' --snapshots x y". A name whose
    value is None or an empty list gives nothing; a list gives the flag once, followed by each value."""
    words = []
    for name, value in named.items():
        values = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
        if values:
            words += [f"--{name.replace('_', '-')}", *(shlex.quote(str(item)) for item in values)]
    return " ".join(words)


class ShellText:
    """Text a rule's shell line holds that its results do not depend on (the interpreter, the code's folder, the
    recipe whose digest is already a param). Formatted as it is; not a plain value, so Snakemake's params rerun
    trigger leaves it out (it compares only builtin values): a moved venv or checkout reruns nothing."""

    def __init__(self, text: str):
        self.text = text

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)

    def __str__(self) -> str:
        return self.text
