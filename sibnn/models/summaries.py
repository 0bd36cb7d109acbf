"""Write every model's summary per binarizer to ``sibnn/catalog.json``, the file the torch-free ``sibnn.catalog``
(and through it the API's ``GET /models``) reads:

    python -m sibnn.models.summaries --write     # after changing an architecture
    python -m sibnn.models.summaries --check     # exit 1 if the file is not current (tests/sibnn/test_catalog.py)

A summary runs one forward pass at the paper's input size (``sibnn.summary.summarize``): about a minute for all
models and binarizers on two cores, which is why the API reads the result instead of computing it.
"""
from __future__ import annotations

import argparse
import json
import sys

from sibnn import catalog
from sibnn.models import create_model, list_models, model_info
from sibnn.summary import summarize


def compute() -> dict:
    out: dict = {}
    for name in list_models():
        i = model_info(name)
        out[name] = {b: summarize(create_model(name, binarizer=b), (1, i.in_channels, i.input_size, i.input_size))
                     .to_dict() for b in catalog.BINARIZER_NAMES}
    return json.loads(json.dumps({"summaries": out}))  # tuples as lists, as read back


def render(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sibnn.models.summaries", description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help=f"write {catalog.SUMMARIES_FILE}")
    g.add_argument("--check", action="store_true", help="exit 1 when the file differs from a fresh computation")
    args = p.parse_args(argv)
    text = render(compute())
    if args.write:
        catalog.SUMMARIES_FILE.write_text(text)
        print(f"wrote {catalog.SUMMARIES_FILE} ({len(text):,} bytes)")
        return 0
    current = catalog.SUMMARIES_FILE.read_text() if catalog.SUMMARIES_FILE.exists() else ""
    if current != text:
        print(f"{catalog.SUMMARIES_FILE} is not current: python -m sibnn.models.summaries --write", file=sys.stderr)
        return 1
    print(f"{catalog.SUMMARIES_FILE} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
