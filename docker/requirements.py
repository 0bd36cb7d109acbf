#!/usr/bin/env python3
"""Print the project's dependencies from pyproject.toml (the one lock of versions) as pip requirements.

    requirements.py pyproject.toml                                        # as pinned
    requirements.py pyproject.toml --rename nvidia-dali-cuda130 nvidia-dali-cuda120   # same DALI, CUDA 12 build
    requirements.py pyproject.toml --drop nvidia-dali-cuda130             # the API image needs no DALI
    requirements.py pyproject.toml --only torch                           # one pin: torch==2.13.0

The images install from this list, so Ray, MLflow, torch and the rest are the versions the tests ran with.
"""
import argparse
import re
import sys
import tomllib


def name_of(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower()


def requirements(pyproject: str, rename: dict[str, str] = {}, drop: tuple[str, ...] = (),
                 only: tuple[str, ...] = ()) -> list[str]:
    with open(pyproject, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    out = []
    for dep in deps:
        name = name_of(dep)
        if name in drop or (only and name not in only):
            continue
        if name in rename:
            dep = rename[name] + dep.strip()[len(name):]
        out.append(dep)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pyproject")
    p.add_argument("--rename", nargs=2, action="append", default=[], metavar=("NAME", "NEW_NAME"))
    p.add_argument("--drop", action="append", default=[], metavar="NAME")
    p.add_argument("--only", action="append", default=[], metavar="NAME")
    a = p.parse_args(argv)
    print("\n".join(requirements(a.pyproject, {o.lower(): n for o, n in a.rename},
                                 tuple(d.lower() for d in a.drop), tuple(o.lower() for o in a.only))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
