"""Finding the function `ibp-check` is pointed at, and the framework it is written in."""

import ast
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from impls.testing.command_line import UsageError

#: Top-level modules whose import marks a framework.
FRAMEWORK_IMPORTS = {"torch": ("torch",), "tf": ("tensorflow", "keras", "tf_keras")}


def load(target: str) -> tuple[ModuleType, Callable[..., Any]]:
    """(module, function) named by 'path/to/file.py:function' or 'package.module:function'."""
    location, separator, name = target.rpartition(":")
    if not separator or not location or not name:
        raise UsageError(
            f"target {target!r} names no function: write path/to/file.py:function or "
            "package.module:function"
        )
    module = _load_file(location) if location.endswith(".py") else _import(location)
    try:
        fn = getattr(module, name)
    except AttributeError:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UsageError(
            f"{location} has no {name!r}; its functions: {', '.join(public) or 'none'}"
        ) from None
    if inspect.isclass(fn):
        raise UsageError(
            f"{target} is a class: point ibp-check at a function, or at an instance of it "
            "(layer = MyLayer(...) in your file, then file.py:layer)"
        )
    if not callable(fn):
        raise UsageError(f"{target} is a {type(fn).__name__}, not a function")
    return module, fn


def _load_file(location: str) -> ModuleType:
    path = Path(location)
    if not path.is_file():
        raise UsageError(f"no file {location}")
    module_name = f"ibp_check_target_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"{location} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # inspect and pickling find functions through it
    # The target's own directory first, so that it imports its neighbours as it would when run.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise UsageError(f"importing {location} failed: {type(error).__name__}: {error}") from error
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _import(location: str) -> ModuleType:
    try:
        return importlib.import_module(location)
    except Exception as error:
        raise UsageError(
            f"importing {location} failed: {type(error).__name__}: {error} (a file path must end "
            "in .py; a module must be importable from the current directory)"
        ) from error


def _source(location: str) -> str:
    """The source text of a target's file or module, read without importing it."""
    if location.endswith(".py"):
        path = Path(location)
    else:
        try:
            spec = importlib.util.find_spec(location)
        except (ImportError, ValueError) as error:
            raise UsageError(
                f"importing {location} failed: {type(error).__name__}: {error}"
            ) from None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise UsageError(
                f"importing {location} failed: no such module (a file path must end in .py; a "
                "module must be importable from the current directory)"
            )
        path = Path(spec.origin)
    if not path.is_file():
        raise UsageError(f"no file {location}")
    return path.read_text(errors="replace")


def framework_of(target: str) -> str:
    """'torch' or 'tf', from the imports in the target's source (read, not run)."""
    location = target.rpartition(":")[0]
    if not location:
        load(target)  # raises the usage error that names the syntax
    try:
        tree = ast.parse(_source(location))
    except SyntaxError:
        tree = None
    imported = set()
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    found = {
        framework for framework, packages in FRAMEWORK_IMPORTS.items() if imported & set(packages)
    }
    if len(found) == 1:
        return found.pop()
    which = "both PyTorch and TensorFlow" if found else "neither PyTorch nor TensorFlow"
    raise UsageError(
        f"cannot tell the framework of the target: {location} imports {which}; pass "
        "--framework torch (channels-first tensors) or --framework tf "
        "(channels-last tensors)"
    )
