"""Build (or remove) the mypyc-compiled hot modules in place: ``make compiled``.

    python scripts/build_compiled.py [--root DIR] [--only MODULE ...] [--opt 0-3]
    python scripts/build_compiled.py --clean [--root DIR]

The modules are ``conveyor._compiled.MODULES`` (read from that file, not imported, so a
stale build never decides what is built). Each becomes an extension module next to its
``.py`` file under ``--root`` (default: this checkout), with one shared library for the
group (``conveyor/_mypyc__mypyc*.so``); the C sources go to ``build/mypyc``. Python then
imports the extension first; ``--clean`` removes them and the pure-Python files run again.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = "conveyor._mypyc"  # the shared library: conveyor/_mypyc__mypyc.<suffix>
BUILD_DIR = Path("build") / "mypyc"


def modules(root: Path) -> list[str]:
    """``MODULES`` as ``conveyor/_compiled.py`` under ``root`` lists them."""
    tree = ast.parse((root / "conveyor" / "_compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "MODULES" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise SystemExit("conveyor/_compiled.py has no MODULES")


def built(root: Path) -> list[Path]:
    """The extension modules a build left under ``root``'s package."""
    return sorted(
        p
        for p in (root / "conveyor").rglob("*")
        if p.is_file() and p.name.endswith(tuple(EXTENSION_SUFFIXES))
    )


def clean(root: Path) -> None:
    for path in built(root):
        path.unlink()
        print(f"removed {path.relative_to(root)}")
    shutil.rmtree(root / BUILD_DIR, ignore_errors=True)


def build(root: Path, names: list[str], opt: str) -> None:
    # setuptools' setup() would read pyproject.toml's [project]; a bare Distribution
    # builds only these extensions, in place (``--inplace``: next to the sources).
    from mypyc.build import mypycify
    from setuptools import Distribution

    os.chdir(root)
    paths = [name.replace(".", "/") + ".py" for name in names]
    extensions = mypycify(paths, opt_level=opt, group_name=GROUP, target_dir=str(BUILD_DIR))
    dist = Distribution({"name": "conveyor-compiled", "ext_modules": extensions})
    dist.script_args = ["build_ext", "--inplace", "--build-temp", str(BUILD_DIR / "temp")]
    dist.parse_command_line()
    dist.run_commands()
    for path in built(root):
        print(f"built {path.relative_to(root)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (has conveyor/)")
    parser.add_argument("--only", nargs="+", metavar="MODULE", help="a subset of MODULES")
    parser.add_argument("--opt", default="3", choices="0123", help="the C compiler's -O")
    parser.add_argument("--clean", action="store_true", help="remove a build")
    args = parser.parse_args()
    root = args.root.resolve()
    clean(root)  # a fresh build never mixes with an old one
    if args.clean:
        return
    names = modules(root)
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"not in conveyor._compiled.MODULES: {', '.join(unknown)}")
        names = [n for n in names if n in args.only]
    build(root, names, args.opt)


if __name__ == "__main__":
    main()
