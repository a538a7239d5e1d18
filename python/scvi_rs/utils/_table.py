"""A small text table, enough for ``view_registry`` (the reference renders with ``rich``)."""

from __future__ import annotations

from typing import Any


class Table:
    """Plain-text table with the subset of ``rich.table.Table``'s API used by fields.

    ``add_column`` and ``add_row`` accept (and ignore) ``rich`` styling keywords, so field
    code written against ``rich`` runs unchanged. ``str(table)`` renders a boxed table.
    """

    def __init__(self, title: str | None = None, **_style: Any) -> None:
        self.title = title
        self.columns: list[str] = []
        self.rows: list[list[str]] = []

    def add_column(self, header: str = "", **_style: Any) -> None:
        self.columns.append(str(header))

    def add_row(self, *cells: Any, **_style: Any) -> None:
        row = ["" if c is None else str(c) for c in cells]
        row += [""] * (len(self.columns) - len(row))
        self.rows.append(row)

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        n = max(len(self.columns), max((len(r) for r in self.rows), default=0))
        headers = self.columns + [""] * (n - len(self.columns))
        widths = [len(h) for h in headers]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

        def fmt(cells: list[str]) -> str:
            return (
                "|"
                + "|".join(f" {c.center(w)} " for c, w in zip(cells, widths, strict=True))
                + "|"
            )

        out = []
        if self.title:
            out.append(self.title.center(len(sep)))
        out += [sep, fmt(headers), sep]
        out += [fmt(r + [""] * (n - len(r))) for r in self.rows]
        out.append(sep)
        return "\n".join(out)

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join(" --- " for _ in self.columns) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)

    __repr__ = __str__


def print_renderable(obj: Any) -> None:
    """Print a :class:`Table`, a ``rich`` renderable (when ``rich`` is installed), or text."""
    if isinstance(obj, (Table, str)):
        print(obj)
        return
    try:  # a custom field may return a rich Table
        from rich.console import Console

        Console().print(obj)
    except ImportError:  # pragma: no cover - rich absent and a foreign object
        print(obj)
