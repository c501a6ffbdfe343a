"""Per-example results appended to a JSONL file one example at a time, so a killed run
resumes where it stopped; and the formatting of optional numbers in the reports."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["JsonlRows", "fmt"]


class JsonlRows:
    """Append-only per-example results with a header that pins the data and settings.

    ``rows`` maps an example's index to its row. A file whose header differs (other data
    or settings) is refused; a last line cut by a kill is dropped and the file rewritten.
    ``path=None`` keeps the rows in memory only.

    Example:
        >>> rows = JsonlRows(None, {"eps": 0.1})
        >>> rows.add(3, {"status": "robust"})
        >>> rows.rows
        {3: {'i': 3, 'status': 'robust'}}
    """

    def __init__(self, path: Path | None, header: Mapping[str, Any]):
        self.path, self.header, self.rows = path, dict(header), {}
        if path is None or not path.exists():
            return
        records = []
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        for ln in lines:
            try:
                records.append(json.loads(ln))
            except json.JSONDecodeError:  # a line cut by a kill: keep the whole ones
                break
        if not records or records[0].get("header") != self.header:
            raise ValueError(
                f"{path} holds results for other data or settings; use another --out folder"
            )
        self.rows = {int(r["i"]): r for r in records[1:]}
        if len(records) < len(lines):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            tmp.replace(path)

    def add(self, i: int, row: Mapping[str, Any]) -> None:
        """Record example ``i``'s row (and append it to the file)."""
        self.rows[int(i)] = {"i": int(i), **row}
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a") as f:
            if new:
                f.write(json.dumps({"header": self.header}) + "\n")
            f.write(json.dumps(self.rows[int(i)]) + "\n")
            f.flush()


def fmt(v: float | None, digits: int = 1) -> str:
    """``v`` with ``digits`` decimals, ``"n/a"`` for ``None``.

    Example:
        >>> fmt(12.345), fmt(None), fmt(0.5, 3)
        ('12.3', 'n/a', '0.500')
    """
    return "n/a" if v is None else f"{v:.{digits}f}"
