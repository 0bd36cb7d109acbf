#!/usr/bin/env python3
"""Print the project's lock (requirements.lock, `make lock`: every package pinned) as what one image installs.

    requirements.py requirements.lock                                        # as locked
    requirements.py requirements.lock --rename nvidia-dali-cuda130 nvidia-dali-cuda120  # same DALI, CUDA 12 build
    requirements.py requirements.lock --drop nvidia-dali-cuda130             # the API image needs no DALI
    requirements.py requirements.lock --only torch                           # one pin: torch==2.13.0
    requirements.py requirements.lock --drop-extra test                      # no test tools in an image
    requirements.py requirements.lock --for fastapi ray mlflow-skinny        # only these and what they need

--drop removes a package and every package the lock has only because of it (pip-compile's "# via" notes), so the
API image carries no DALI codecs; --rename keeps the version and drops the nvidia-* packages only the old name
needed (the CUDA 12 build of DALI brings its own CUDA 12 codecs); --drop-extra drops the packages of one of
pyproject.toml's extras (read next to the lock) the same way; --for keeps only the packages named and what they
need, transitively, by the same notes (the API image: the packages the API imports, without torch and the training
stack). Everything else is installed exactly as locked, so Ray, MLflow, torch and the rest are the versions the tests
ran with.
"""
import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = "<pyproject>"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(path: str) -> dict[str, tuple[str, set[str]]]:
    """canonical name → (requirement line, the packages it is there for; ROOT for pyproject.toml itself)."""
    out: dict[str, tuple[str, set[str]]] = {}
    current = None
    for raw in open(path).read().splitlines():
        line = raw.strip()
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?:\s+#.*)?", line)
        if m:
            current = canonical(m.group(1))
            out[current] = (f"{m.group(1)}=={m.group(2)}", set())
            continue
        if current and line.startswith("#"):
            via = line.lstrip("#").strip()
            via = via.removeprefix("via").strip()
            for part in filter(None, (p.strip() for p in via.split(","))):
                out[current][1].add(ROOT if "pyproject.toml" in part or part.startswith("-r ") else canonical(
                    part.split()[0]))
        elif not line:
            current = None
    return out


def _orphans(lock: dict, gone: set[str], only_prefix: str = "") -> set[str]:
    """``gone`` and whatever then has no reason left to be in the lock (optionally: only names with a prefix)."""
    gone = set(gone)
    while True:
        orphans = {n for n, (_, via) in lock.items()
                   if n not in gone and via and via <= gone and n.startswith(only_prefix)}
        if not orphans:
            return gone
        gone |= orphans


def _needed_by(lock: dict, roots: set[str]) -> set[str]:
    """``roots`` and every package the lock has because of one of them, transitively. pip-compile's notes name each
    package's dependents with extras stripped, so a root brings what its extras need too (ray: ray[default,tune])."""
    kept = set(roots)
    while True:
        more = {n for n, (_, via) in lock.items() if n not in kept and via & kept}
        if not more:
            return kept
        kept |= more


def extra_names(lock_path: str, extra: str) -> set[str]:
    """Names of the packages pyproject.toml (beside the lock) lists in one optional-dependencies extra."""
    with open(Path(lock_path).with_name("pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["optional-dependencies"][extra]
    return {canonical(re.split(r"[\[<>=!~; ]", d.strip(), maxsplit=1)[0]) for d in deps}


def requirements(lock_path: str, rename: dict[str, str] = {}, drop: tuple[str, ...] = (),
                 only: tuple[str, ...] = (), drop_extras: tuple[str, ...] = (),
                 needed_by: tuple[str, ...] = ()) -> list[str]:
    lock = parse_lock(lock_path)
    rename = {canonical(k): v for k, v in rename.items() if canonical(k) != canonical(v)}
    drop = tuple(map(canonical, drop)) + tuple(n for e in drop_extras for n in sorted(extra_names(lock_path, e)))
    roots = set(map(canonical, needed_by))
    missing = [n for n in (*rename, *drop, *map(canonical, only), *sorted(roots)) if n not in lock]
    if missing:
        raise SystemExit(f"not in {lock_path}: {', '.join(missing)}")
    if only:
        return [lock[canonical(n)][0] for n in only]
    gone = _orphans(lock, set(drop))
    gone = _orphans(lock, gone | set(rename), only_prefix="nvidia-")
    if roots:
        gone |= set(lock) - _needed_by(lock, roots)
    kept = {n: v for n, v in lock.items() if n not in gone}
    out = [line for _, (line, _) in sorted(kept.items())]
    out += [f"{new}=={lock[old][0].split('==', 1)[1]}" for old, new in rename.items()]
    return sorted(out, key=str.lower)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lock")
    p.add_argument("--rename", nargs=2, action="append", default=[], metavar=("NAME", "NEW_NAME"))
    p.add_argument("--drop", action="append", default=[], metavar="NAME")
    p.add_argument("--only", action="append", default=[], metavar="NAME")
    p.add_argument("--drop-extra", action="append", default=[], metavar="EXTRA")
    p.add_argument("--for", nargs="+", action="extend", default=[], metavar="NAME", dest="needed_by",
                   help="only these packages and what they need")
    a = p.parse_args(argv)
    print("\n".join(requirements(a.lock, dict(a.rename), tuple(a.drop), tuple(a.only), tuple(a.drop_extra),
                                  tuple(a.needed_by))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
