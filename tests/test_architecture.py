"""Source-reading tests of the package's structure."""

from __future__ import annotations

import ast
import re
from pathlib import Path

QADV = Path(__file__).resolve().parents[1] / "qadv"


def test_no_string_dispatch_on_norms():
    """Outside ``qadv/attacks/norms.py`` no code compares a norm name with a string literal
    (``norm == "linf"``, ``norm in ("l2", ...)``) or keys a dict literal by norm names: it
    asks the :class:`qadv.attacks.norms.Norm` record (``get_norm(name)``) instead, so a
    norm's name is read in one place."""
    names = {"linf", "l2", "l1"}
    allowed: dict[str, str] = {
        # path relative to qadv/ -> why it may (none today)
    }

    def literals(node) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return set().union(*(literals(e) for e in node.elts)) if node.elts else set()
        return set()

    def mentions_norm(node) -> bool:  # norm, self.norm, norm_name, dual_norm, ...
        ident = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
        return re.search(r"(^|_)norm(_name)?$", ident.lower()) is not None

    bad = []
    for path in sorted(QADV.rglob("*.py")):
        rel = path.relative_to(QADV).as_posix()
        if rel == "attacks/norms.py" or rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                consts = set().union(*(literals(s) for s in sides))
                if consts & names or (consts and any(mentions_norm(s) for s in sides)):
                    bad.append(f"{where}: {ast.unparse(node)}")
            elif isinstance(node, ast.Dict):
                keys = set().union(*(literals(k) for k in node.keys if k is not None))
                if keys & names:
                    bad.append(f"{where}: dict keyed by norm names {sorted(keys & names)}")
    assert not bad, "norm names compared outside norms.py:\n" + "\n".join(bad)
