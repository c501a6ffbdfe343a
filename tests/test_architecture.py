"""Source-reading checks of the package's architecture (``ast``, no imports of qadv).

Each rule is one test function over :func:`_modules`, with a companion test that feeds the
rule's checker a snippet that breaks it, so a checker that finds nothing fails too.

Rule ``policy kinds``: only ``qadv/quant/`` may decide anything by the kind or name of a
quantization policy. Elsewhere a policy is asked (``policy.quantize_kernel``,
``policy.anneals``, ``policy.exact_activation``, ...), never compared to a string
literal, matched against string patterns, or used as the key of a lookup table.

Rule ``norms``: only ``qadv/attacks/norms.py`` reads a norm's name; elsewhere the
:class:`~qadv.attacks.norms.Norm` record is asked.

Rule ``size``: no module over 600 lines, no function over 100 lines unless it says why
("Long because" in its docstring or on its ``def`` line).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qadv"


def _modules(*, outside: tuple[str, ...] = ()) -> Iterator[tuple[str, ast.Module]]:
    """``(path relative to the repository, parsed module)`` of every ``qadv/**/*.py``,
    except those under the folders ``outside`` (relative to the repository)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if any(rel.startswith(prefix.rstrip("/") + "/") for prefix in outside):
            continue
        yield rel, ast.parse(path.read_text(), filename=rel)


# ----------------------------------------------------------------------------- policy kinds

POLICY_PACKAGE = "qadv/quant"

# names that hold a policy, and names that hold a policy's kind or name string
_POLICY_NAMES = frozenset({"policy", "quant_policy"})
_KIND_NAMES = frozenset({"policy_kind", "policy_name"})
# calls that return a policy
_POLICY_FACTORIES = frozenset({"get_policy", "make_policy", "QuantPolicy"})
# attributes of a policy that spell its kind
_KIND_ATTRS = frozenset({"kind", "name"})

# deliberate exceptions: {(path, line text stripped): reason}; none today
POLICY_KIND_EXCEPTIONS: dict[tuple[str, str], str] = {}


class _PolicyKindUses(ast.NodeVisitor):
    """Finds decisions taken on a policy's kind, per function scope.

    A *policy expression* is a name in :data:`_POLICY_NAMES`, any ``<x>.policy``
    attribute, a call of :data:`_POLICY_FACTORIES`, or a local name bound to one of these
    (``p = self.policy``). A *kind expression* is ``<policy expression>.kind`` or
    ``.name``, ``<x>.policy`` (a config's policy string), a name in :data:`_KIND_NAMES`,
    or a local name bound to one of these (``kind = policy.kind``). Flagged: a kind
    expression compared (``==``, ``!=``, ``in``, ``is``, ...) with string literals,
    tested with ``startswith``/``endswith``, matched against string patterns, or used as
    a subscript or ``.get`` key.
    """

    def __init__(self, tree: ast.Module):
        self.found: list[tuple[int, str]] = []
        self.str_constants = {
            t.id
            for stmt in tree.body
            if isinstance(stmt, ast.Assign | ast.AnnAssign)
            and stmt.value is not None
            and self._has_str_literal(stmt.value)
            for t in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
            if isinstance(t, ast.Name)
        }
        self._scopes: list[tuple[set[str], set[str]]] = [(set(), set())]

    # -------------------------------------------------------------- classification

    def _is_policy(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in _POLICY_NAMES or node.id in self._scopes[-1][0]
        if isinstance(node, ast.Attribute):
            return node.attr == "policy"
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
            return name in _POLICY_FACTORIES
        return False

    def _is_kind(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in _KIND_NAMES or node.id in self._scopes[-1][1]
        if isinstance(node, ast.Attribute):
            if node.attr == "policy":
                return True
            return node.attr in _KIND_ATTRS and self._is_policy(node.value)
        return False

    @staticmethod
    def _has_str_literal(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return any(_PolicyKindUses._has_str_literal(e) for e in node.elts)
        return False

    def _is_str_constant(self, node: ast.AST) -> bool:
        """A string literal, a collection of them, or a module constant holding one."""
        if isinstance(node, ast.Name) and node.id in self.str_constants:
            return True
        return self._has_str_literal(node)

    def _flag(self, node: ast.AST, what: str) -> None:
        self.found.append((node.lineno, what))

    # -------------------------------------------------------------- scopes and bindings

    def _visit_scope(self, node: ast.AST) -> None:
        self._scopes.append((set(self._scopes[-1][0]), set(self._scopes[-1][1])))
        self.generic_visit(node)
        self._scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_scope

    def _bind(self, target: ast.AST, value: ast.AST) -> None:
        if isinstance(target, ast.Tuple | ast.List) and isinstance(value, ast.Tuple | ast.List):
            for t, v in zip(target.elts, value.elts, strict=False):
                self._bind(t, v)
        elif isinstance(target, ast.Name):
            policies, kinds = self._scopes[-1]
            policies.discard(target.id)
            kinds.discard(target.id)
            if self._is_policy(value):
                policies.add(target.id)
            elif self._is_kind(value):
                kinds.add(target.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            self._bind(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        if node.value is not None:
            self._bind(node.target, node.value)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.generic_visit(node)
        self._bind(node.target, node.value)

    # -------------------------------------------------------------- decisions

    def visit_Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for op, a, b in zip(node.ops, operands, operands[1:], strict=False):
            if isinstance(op, ast.In | ast.NotIn) and self._is_kind(a):
                self._flag(node, f"tests whether {ast.unparse(a)} is in {ast.unparse(b)}")
                continue
            for kind, other in ((a, b), (b, a)):
                if self._is_kind(kind) and self._is_str_constant(other):
                    self._flag(node, f"compares {ast.unparse(kind)} with a string literal")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Attribute):
            if f.attr in ("startswith", "endswith") and self._is_kind(f.value):
                self._flag(node, f"tests {ast.unparse(f.value)}.{f.attr}(...)")
            if f.attr == "get" and node.args and self._is_kind(node.args[0]):
                self._flag(node, f"looks up {ast.unparse(node.args[0])} with .get")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if self._is_kind(node.slice):
            self._flag(node, f"indexes a table by {ast.unparse(node.slice)}")
        self.generic_visit(node)

    def visit_Match(self, node: ast.Match) -> None:
        if self._is_kind(node.subject):
            self._flag(node, f"matches {ast.unparse(node.subject)} against patterns")
        self.generic_visit(node)


def policy_kind_uses(tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, what)`` of every decision taken on a policy's kind in ``tree``."""
    visitor = _PolicyKindUses(tree)
    visitor.visit(tree)
    return visitor.found


def test_no_policy_kind_decisions_outside_quant():
    """Only ``qadv/quant/`` may decide by a policy's kind; elsewhere, ask the policy."""
    bad = []
    for rel, tree in _modules(outside=(POLICY_PACKAGE,)):
        lines = (PACKAGE.parent / rel).read_text().splitlines()
        for line, what in policy_kind_uses(tree):
            if (rel, lines[line - 1].strip()) not in POLICY_KIND_EXCEPTIONS:
                bad.append(f"{rel}:{line}: {what}")
    assert not bad, "decisions on a policy kind outside qadv/quant:\n" + "\n".join(bad)


def test_policy_kind_exceptions_are_still_needed():
    """Every listed exception still matches a line (a stale entry hides nothing)."""
    for (rel, text), reason in POLICY_KIND_EXCEPTIONS.items():
        assert reason, f"exception {rel}: {text!r} gives no reason"
        assert text in (PACKAGE.parent / rel).read_text(), f"stale exception {rel}: {text!r}"


_BREAKS_POLICY_RULE = [
    'if policy.kind == "bnn_wq": pass',
    'x = self.policy.kind in ("bnn_wq", "bnn_waq")',
    'def f(self):\n    p = self.policy\n    return p.kind != "ref"',
    'def f(policy):\n    kind = policy.kind\n    return kind in ["mbn", "pact"]',
    'def f(c):\n    return make_policy(c).name == "pact4"',
    'def f(c):\n    return [k for k, c in models.items() if c.policy == "ref"]',
    'bits = {"ref": 8, "pact": 4}[policy.kind]',
    "bits = TABLE.get(model.policy.kind)",
    'ok = policy.name.startswith("pact")',
    'def f(policy_name):\n    return policy_name == "xnor"',
    'match policy.kind:\n    case "ref":\n        pass',
    'def f(p):\n    p, act = self.policy, None\n    return "mbn" == p.kind',
    'KINDS = ("bnn_waq", "ref")\ndef f(policy):\n    return policy.kind not in KINDS',
    'def f(self, policy):\n    return policy.kind in self._APPLIES.get("bits")',
    'NAME = "ref"\nok = policy.kind == NAME',
]

_KEEPS_POLICY_RULE = [
    'def apply(a, kind):\n    return a if kind == "sign" else -a',  # an activation kind
    'if unit.kind == "sign": pass',
    'if cfg.kind == "fixed": pass',  # a temperature kind
    "takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)",
    "if policy.is_float: pass",
    'label = f"{policy.name} ({policy.wq_method})"',
    'def f(self):\n    p = self.policy\n    p = params[0]\n    return p.kind == "x"',  # rebound
]


@pytest.mark.parametrize("source", _BREAKS_POLICY_RULE)
def test_policy_kind_checker_finds_what_breaks_the_rule(source):
    assert policy_kind_uses(ast.parse(source)), source


@pytest.mark.parametrize("source", _KEEPS_POLICY_RULE)
def test_policy_kind_checker_leaves_other_kinds_alone(source):
    assert not policy_kind_uses(ast.parse(source)), source


# ----------------------------------------------------------------------------- layers
#
# Rule ``applications on top``: the library never imports an application. The
# applications (``qadv/apps/``: the command line, studies, paper experiments, the demo)
# sit above it; ``qadv/cli/`` is only the entry point of the ``qadv`` command.

APPS_PACKAGE = "qadv/apps"
CLI_ENTRY = "qadv/cli"
_APPLICATION_MODULES = ("qadv.apps", "qadv.cli", "qadv.study", "qadv.demo")


def _imported_modules(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``(line, dotted name)`` of every module an ``import`` or ``from ... import`` names,
    ``from qadv import cli`` giving ``qadv.cli`` (relative imports are not used in qadv)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def application_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Imports of an application module (:data:`_APPLICATION_MODULES`) in ``tree``."""
    return [
        (line, name)
        for line, name in _imported_modules(tree)
        if any(name == m or name.startswith(m + ".") for m in _APPLICATION_MODULES)
    ]


def test_library_imports_no_application():
    found = [
        f"{path}:{line}: imports {name}"
        for path, tree in _modules(outside=(APPS_PACKAGE, CLI_ENTRY))
        for line, name in application_imports(tree)
    ]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "from qadv.apps.study import StudyConfig",
        "from qadv import cli",
        "import qadv.apps.demo as demo",
        "def f():\n    from qadv.study import run_study",
        "from qadv.demo import DEMO_MODELS",
    ],
)
def test_application_import_checker_finds_what_breaks_the_rule(source):
    assert application_imports(ast.parse(source))


@pytest.mark.parametrize(
    "source", ["from qadv import attacks, records", "import qadv.training", "from qadv import apt"]
)
def test_application_import_checker_leaves_library_imports_alone(source):
    assert application_imports(ast.parse(source)) == []


# Rule ``no deprecated path inside``: nothing in the repository imports ``qadv.train``, the
# deprecated name of ``qadv.training``.


def _repository_modules() -> Iterator[tuple[str, ast.Module]]:
    for folder in ("qadv", "tests", "benchmarks", "experiments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            yield rel, ast.parse(path.read_text(), filename=rel)


def test_nothing_imports_the_deprecated_train_module():
    found = [
        f"{path}:{line}"
        for path, tree in _repository_modules()
        for line, name in _imported_modules(tree)
        if name == "qadv.train" or name.startswith("qadv.train.")
    ]
    assert found == [], found


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


# ----------------------------------------------------------------------------- import circles
#
# Rule ``no import circles``: the modules of ``qadv/`` import each other without a circle,
# counting every import statement that runs when a module is imported (module level,
# class bodies, ``if``/``try`` blocks): none may close a circle. The imports written
# inside functions, which run at their first call, may not either, except the few listed
# in :data:`FUNCTION_IMPORT_EXCEPTIONS` with their reason. Two kinds of edges are left
# out everywhere, on purpose:
# ``if TYPE_CHECKING:`` blocks (never run), and the implicit import of a package's
# ``__init__`` when one of its submodules is imported (``qadv.training.step`` importing
# ``qadv.training.config`` does not count as importing ``qadv.training``), which every
# package with re-exports in its ``__init__`` would otherwise close into a circle.


def _dotted(rel: str) -> str:
    """``qadv/training/config/__init__.py`` -> ``qadv.training.config``."""
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _import_nodes(tree: ast.AST, *, in_functions: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree``, without ``if TYPE_CHECKING:`` blocks and, unless
    ``in_functions``, without those inside functions."""
    for node in ast.iter_child_nodes(tree):
        if _is_type_checking(node):
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            if not in_functions:
                continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _import_nodes(node, in_functions=in_functions)


def import_graph(
    modules: dict[str, ast.Module], *, in_functions: bool = True
) -> dict[str, set[str]]:
    """``module -> the modules of `modules` it imports`` (dotted names). ``from a.b import
    c`` imports ``a.b.c`` when that is a module, else ``a.b``; a name is resolved to its
    longest prefix that is a module."""

    def resolve(dotted: str) -> str | None:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in modules:
                return ".".join(parts[:i])
        return None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in _import_nodes(tree, in_functions=in_functions):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in map(resolve, targets):
                if target is not None and target != name:
                    graph[name].add(target)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of ``graph``: its strongly connected components of more than one
    module, each sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(circles)


# imports inside functions that close a circle, on purpose: {(importer, imported): reason}
FUNCTION_IMPORT_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("qadv.attacks.registry", "qadv.attacks"): "at its first lookup the registry imports "
    "the attack package, whose modules register themselves",
    ("qadv.attacks.fab", "qadv.attacks.deepfool"): "fab.DeepFoolConfig, the earlier import "
    "path of DeepFool's config, is a lazy re-export (module __getattr__)",
}


def _qadv_modules() -> dict[str, ast.Module]:
    return {_dotted(rel): tree for rel, tree in _modules()}


def test_no_import_circles():
    modules = _qadv_modules()
    circles = import_circles(import_graph(modules, in_functions=False))
    assert circles == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)
    graph = import_graph(modules)  # imports inside functions too, but the exceptions
    for importer, imported in FUNCTION_IMPORT_EXCEPTIONS:
        graph[importer].discard(imported)
    circles = import_circles(graph)
    assert circles == [], "import circles through imports inside functions:\n" + "\n".join(
        " <-> ".join(c) for c in circles
    )


def test_function_import_exceptions_are_still_needed():
    graph = import_graph(_qadv_modules())
    stale = [edge for edge in FUNCTION_IMPORT_EXCEPTIONS if edge[1] not in graph[edge[0]]]
    assert stale == [], f"exceptions that no longer import: {stale}"


@pytest.mark.parametrize(
    ("sources", "circles"),
    [
        ({"qadv.a": "from qadv.b import f", "qadv.b": "import qadv.a"}, [["qadv.a", "qadv.b"]]),
        (  # through a function-level import, and through a submodule named in a from-import
            {
                "qadv.p": "",
                "qadv.p.x": "from qadv.p import y",
                "qadv.p.y": "def f():\n    from qadv.p.x import g",
            },
            [["qadv.p.x", "qadv.p.y"]],
        ),
        (  # three modules round
            {"qadv.a": "import qadv.b", "qadv.b": "import qadv.c", "qadv.c": "import qadv.a"},
            [["qadv.a", "qadv.b", "qadv.c"]],
        ),
        (  # one way only; a TYPE_CHECKING import does not run
            {
                "qadv.a": "from qadv.b import f",
                "qadv.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from qadv.a import g",
            },
            [],
        ),
    ],
)
def test_import_circle_checker_finds_circles(sources, circles):
    modules = {name: ast.parse(text) for name, text in sources.items()}
    assert import_circles(import_graph(modules)) == circles


def test_import_circle_checker_can_leave_function_imports_out():
    modules = {
        "qadv.a": ast.parse("import qadv.b"),
        "qadv.b": ast.parse("def f():\n    import qadv.a"),
    }
    assert import_circles(import_graph(modules)) == [["qadv.a", "qadv.b"]]
    assert import_circles(import_graph(modules, in_functions=False)) == []


# ----------------------------------------------------------------------------- size
#
# Rule ``size``: no module of ``qadv/`` is over MAX_MODULE_LINES lines, and no function or
# method over MAX_FUNCTION_LINES lines (``end_lineno - lineno + 1``, from its ``def`` line
# to its last line) unless it says why it must stay whole: its docstring contains
# "Long because", or its ``def`` line carries a comment ``# Long because ...``.

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
LONG_REASON = "long because"  # compared in lower case

# Modules still being brought under the size rule; each entry goes once its module keeps
# the rule (test_size_pending_entries_are_still_needed says when).
PENDING: dict[str, str] = {}


def long_functions(tree: ast.Module, lines: list[str]) -> list[tuple[int, str, int]]:
    """``(line, name, length)`` of every function over :data:`MAX_FUNCTION_LINES` lines
    that gives no reason ("Long because" in its docstring or on its ``def`` line)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = node.end_lineno - node.lineno + 1
        if length <= MAX_FUNCTION_LINES:
            continue
        doc = (ast.get_docstring(node) or "").lower()
        if LONG_REASON in doc or LONG_REASON in lines[node.lineno - 1].lower():
            continue
        found.append((node.lineno, node.name, length))
    return found


def size_violations(rel: str, tree: ast.Module, text: str) -> list[str]:
    """What breaks the size rule in one module (``rel`` names it in the messages)."""
    lines = text.splitlines()
    bad = []
    if len(lines) > MAX_MODULE_LINES:
        bad.append(f"{rel}: {len(lines)} lines (at most {MAX_MODULE_LINES})")
    for line, name, length in long_functions(tree, lines):
        bad.append(
            f"{rel}:{line}: {name} has {length} lines (at most {MAX_FUNCTION_LINES} "
            "without a 'Long because' reason)"
        )
    return bad


def test_modules_and_functions_keep_the_size_rule():
    bad = []
    for rel, tree in _modules():
        if rel not in PENDING:
            bad += size_violations(rel, tree, (ROOT / rel).read_text())
    assert not bad, "over the size rule:\n" + "\n".join(bad)


def test_size_pending_entries_are_still_needed():
    """Every pending module exists and still breaks the rule (else remove its entry)."""
    for rel, reason in PENDING.items():
        assert reason, f"pending entry {rel} gives no reason"
        path = ROOT / rel
        assert path.exists(), f"stale pending entry {rel}: no such module"
        text = path.read_text()
        assert size_violations(rel, ast.parse(text), text), (
            f"{rel} keeps the size rule now: remove it from PENDING"
        )


_LONG_BODY = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n" + _LONG_BODY,
        "class C:\n    def f(self):\n" + _LONG_BODY.replace("    ", "        "),
        'def f():\n    """Short on purpose."""\n' + _LONG_BODY,
        "x = 1\n" * (MAX_MODULE_LINES + 1),
    ],
)
def test_size_checker_finds_what_breaks_the_rule(source):
    assert size_violations("m.py", ast.parse(source), source), source[:60]


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n" + _LONG_BODY[: -len(f"    x{MAX_FUNCTION_LINES - 1} = 99\n")],
        'def f():\n    """Long because the loop keeps one batch in flight."""\n' + _LONG_BODY,
        "def f():  # Long because one table is built in one place\n" + _LONG_BODY,
        "x = 1\n" * MAX_MODULE_LINES,
    ],
)
def test_size_checker_leaves_what_keeps_the_rule(source):
    assert not size_violations("m.py", ast.parse(source), source), source[:60]
