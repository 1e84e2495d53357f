"""The library as a user drops it into a model: light imports, one graph under torch.compile and
XLA, and a package whose modules point one way (no import circles; the layers never import the
benchmarks or the test oracle)."""

import ast
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from .conftest import import_framework

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("impls", "reference", "bench")

#: What importing a layer may add to what its framework itself loads: the layer's own modules and
#: the conventions and input contract it shares with the reference, never the reference's SciPy
#: stages, the checker's hypothesis, the benchmarks' plotting or progress bars.
ALLOWED_PREFIXES = ("impls", "reference.contracts", "reference.conventions", "reference")
FORBIDDEN = ("scipy", "hypothesis", "matplotlib", "tqdm", "bench", "reference.stages", "pytest")


@pytest.mark.parametrize("package", ["impls.torch", "impls.tf"])
def test_importing_a_layer_loads_only_the_layer(package):
    framework = "torch" if package == "impls.torch" else "tensorflow"
    import_framework(framework)
    script = (
        "import json, sys\n"
        f"import {framework}\n"
        "before = set(sys.modules)\n"
        f"import {package}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""},
    )
    added = json.loads(done.stdout.strip().splitlines()[-1])
    foreign = [m for m in added if not m.startswith(ALLOWED_PREFIXES) and "." in m]
    forbidden = [m for m in added if m.split(".")[0] in FORBIDDEN or m in FORBIDDEN]
    assert not forbidden, f"import {package} loads {forbidden}"
    # Standard-library helpers (dataclasses, string, ...) may come along; third-party ones not.
    third_party = [m for m in foreign if m.split(".")[0] not in sys.stdlib_module_names]
    assert not third_party, f"import {package} loads {third_party}"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _imports(path: pathlib.Path, name: str, modules: dict[str, pathlib.Path]) -> set[str]:
    """The project modules `path` imports, at module level or inside functions (an import at call
    time is still a dependency: it only hides the circle until the call). Imports under
    `if TYPE_CHECKING:` are for the type checker alone and run never."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from package import module` depends on that module; `from module import name`
            # on the module.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    """The meta-test: a planted circle, and a chain that is none."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_library_never_imports_the_benchmarks_or_the_oracle():
    """impls/ is what users install for their models and checks: the benchmarks are built on it,
    never the other way round; and the layers themselves never load the SciPy reference."""
    graph = _graph()
    into_bench = {
        m: sorted(t for t in graph[m] if t.startswith("bench"))
        for m in graph
        if m.startswith(("impls", "reference"))
    }
    assert {m: t for m, t in into_bench.items() if t} == {}
    layers = [m for m in graph if m.startswith(("impls.torch", "impls.tf"))]
    assert all("reference.stages" not in graph[m] for m in layers)


# --- one graph ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"method": "eigh"},
        {"method": "newton_schulz"},
        {"method": "minimax_newton_schulz"},
        {"method": "minimax_newton_schulz", "backward": "lyapunov"},
        {"method": "newton_schulz", "backward": "autograd"},
    ],
    ids=lambda o: "-".join(o.values()) or "auto",
)
def test_torch_compile_takes_the_head_whole(options):
    """torch.compile(fullgraph=True) of the head and of sqrtm, forward and backward: any graph
    break is an error (the auto table is read once at import, the wrong-iterate recomputation is
    a torch.cond). backend="eager" is dynamo's capture alone: the part that decides breaks."""
    torch = import_framework("torch")
    from impls.torch import IBPHead, sqrtm

    head = IBPHead(8, 3, **options)
    compiled = torch.compile(head, fullgraph=True, backend="eager")
    x = torch.rand(2, 8, 5, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    logits = compiled(x)
    logits.square().sum().backward()
    assert torch.allclose(logits, head(x), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(x.grad).all()

    root = torch.compile(lambda a: sqrtm(a, **options), fullgraph=True, backend="eager")
    a = torch.eye(4).expand(2, 4, 4).clone().requires_grad_(True)
    root(a).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_keras_jit_compile_trains_the_head():
    """XLA (jit_compile=True) takes the Keras head, in fit. Keras silently falls back to
    jit_compile=False where TF's op determinism is on (the training runner turns it on in its
    process, and cannot turn it off), so this runs in a fresh interpreter and asserts that the
    model really compiled with XLA."""
    import_framework("keras")
    program = """
import json, keras, numpy as np
from impls.tf import IBPHead
model = keras.Sequential([keras.Input((5, 5, 8)), IBPHead(8, 3)])
model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
x = np.random.default_rng(0).uniform(size=(4, 5, 5, 8)).astype("float32")
history = model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
print(json.dumps({"jit": model.jit_compile, "loss": history.history["loss"]}))
"""
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["jit"] is True
    assert np.isfinite(result["loss"]).all()


# --- the console scripts' first code -----------------------------------------------------------


def test_a_command_without_its_extra_says_which_to_install(monkeypatch, capsys):
    from impls import entry_points

    monkeypatch.setitem(entry_points.EXTRAS, "check", ("numpy", "no_such_module_ibp"))
    with pytest.raises(SystemExit) as exited:
        entry_points.ibp_check()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "no no_such_module_ibp" in err and "pip install 'ibp-suite[check]'" in err


def test_ctrl_c_while_a_command_imports_is_one_line(monkeypatch, capsys):
    from impls import entry_points

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry_points.importlib, "import_module", interrupted)
    monkeypatch.setattr(entry_points, "missing", lambda extra: [])
    with pytest.raises(SystemExit) as exited:
        entry_points.ibp_check()
    assert exited.value.code == entry_points.INTERRUPTED
    assert capsys.readouterr().err == "ibp-check: interrupted\n"


@pytest.mark.parametrize("extra", ["check", "bench"])
def test_every_module_an_extra_names_is_installed_with_it(extra):
    """The extras' module lists must name modules the extra really installs: here (dev installs
    every extra) each one imports."""
    from impls import entry_points

    assert entry_points.missing(extra) == []
