"""The repo root shadows nothing: `kernels/` is mnv2engine.kernels, installed under that
name, but a REPL or `python -m pytest` started in the checkout puts the root on sys.path,
where this folder would hide the PyPI package `kernels` (a dependency of transformers)."""
import importlib.machinery
import importlib.util
import os
import sys


def replace_with_installed(name: str, init_file: str) -> None:
    """Put the package `name` found on sys.path without the repo root into sys.modules in
    place of this folder's, or raise ModuleNotFoundError as if this folder did not exist."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r} (the folder {root}/{name} is mnv2engine.{name})",
                                  name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
