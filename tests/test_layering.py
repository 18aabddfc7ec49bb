"""The package's shape, checked: layers, cycles, sizes, library internals.

Every import counts, function-local and ``TYPE_CHECKING`` ones included: a
cycle hidden inside a function is still a cycle.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent / "trioproxy"
MAX_LINES = 400
# Sans-IO modules: bytes in, results out; no event loop, no HTTP library.
SANS_IO = (
    "relay/sse.py", "upstream/http11.py", "dialects.py", "testing/mock_scripts.py",
    *(f"translate/{p.name}" for p in sorted((ROOT / "translate").glob("*.py"))),
    "testing/mock_gemini.py", "testing/mock_tools.py",
)  # fmt: skip
IO_LIBRARIES = {"trio", "httpx", "hypercorn", "anyio", "h11"}
# The one module allowed to touch Hypercorn's private names.
HYPERCORN_PATCHES = "server/hypercorn.py"


def _modules() -> dict[str, pathlib.Path]:
    return {
        ".".join(("trioproxy", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in ROOT.rglob("*.py")
    }


MODULES = _modules()


def _imports(module: str, path: pathlib.Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of the trioproxy modules ``module`` imports."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("trioproxy") and name != module and name != "trioproxy":
                found.add(name)
    return found


def _graph(level: int | None = None) -> dict[str, set[str]]:
    """Module graph; with ``level`` = 2, the graph of subpackages (trioproxy.X).

    Between subpackages, one edge is left out by design: the server's lazy
    import of the built-in mock (``trioproxy.testing``, which sits above
    everything: chaos starts gateways). Any other import counts."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        src = ".".join(module.split(".")[:level]) if level else module
        eager = _imports(module, path, top_level_only=True)
        for target in _imports(module, path):
            if level and target.startswith("trioproxy.testing") and target not in eager:
                continue
            dst = ".".join(target.split(".")[:level]) if level else target
            if src != dst:
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules() -> None:
    assert _cycle(_graph()) is None


def test_no_import_cycle_between_subpackages() -> None:
    """trioproxy.server -> trioproxy.relay -> ... never leads back."""
    assert _cycle(_graph(level=2)) is None


def test_runtime_code_imports_testing_tools_only_lazily() -> None:
    for module, path in MODULES.items():
        if module.startswith("trioproxy.testing"):
            continue
        eager = {m for m in _imports(module, path, top_level_only=True)}
        assert not {m for m in eager if m.startswith("trioproxy.testing")}, module


def test_importing_the_server_loads_no_testing_tool() -> None:
    code = (
        "import sys, trioproxy.server.serve, trioproxy.server.app, trioproxy.cli;"
        "print([m for m in sys.modules if m.startswith('trioproxy.testing')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", SANS_IO)
def test_sans_io_modules_import_no_io_library(name: str) -> None:
    tree = ast.parse((ROOT / name).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m.split(".")[0] in IO_LIBRARIES}


def test_every_module_is_at_most_400_lines() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def _private_uses(path: pathlib.Path) -> list[str]:
    """``x._name`` where x is not self/cls, and getattr/setattr with a "_name"."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            attr = node.attr
            private = attr.startswith("_") and not attr.startswith("__")
            owner = node.value
            if private and not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} .{attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) > 1
        ):
            name = node.args[1]
            value = str(name.value) if isinstance(name, ast.Constant) else ""
            if value.startswith("_") and not value.startswith("__"):
                found.append(f"{path.name}:{node.lineno} {node.func.id} {value}")
    return found


def test_no_private_attribute_outside_the_hypercorn_module() -> None:
    """Library internals (httpx's, Hypercorn's, trio's) are touched in one module only;
    elsewhere a module reaches only its own objects' private names through self."""
    uses = {
        m: found
        for m, p in MODULES.items()
        if not str(p).endswith(HYPERCORN_PATCHES) and (found := _private_uses(p))
    }
    assert uses == {}


def test_importing_the_server_leaves_hypercorn_untouched() -> None:
    code = (
        "from hypercorn.trio.tcp_server import TCPServer;"
        "from hypercorn.protocol.h11 import H11Protocol;"
        "before = (TCPServer.run, TCPServer._read_data, H11Protocol._send_h11_event);"
        "import trioproxy.server.serve, trioproxy.server.app, trioproxy.cli;"
        "after = (TCPServer.run, TCPServer._read_data, H11Protocol._send_h11_event);"
        "print(before == after)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
