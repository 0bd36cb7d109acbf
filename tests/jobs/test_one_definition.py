"""One shape per fact (issue 23 item 4): the ρ range, the weight-gradient rules, the binarizers and the runners are
each defined once — ``sibnn.catalog`` for the method's choices, ``jobs.runners`` for the runners — and the spec, the
published JSON schema and the training command line take them from there. A grep-level check fails when a private
copy of a range or a choice list comes back."""
from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path
from unittest import mock

import pytest

from jobs import runners
from jobs.spec import ExperimentSpec, GridSpec, RecipeSpec, ResourcesSpec, SpecError, parse_spec
from sibnn import catalog

ROOT = Path(__file__).resolve().parents[2]
BASE = {"name": "t", "dataset": {"kind": "digits"}, "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn"]}}


def _literal_values(annotation) -> tuple:
    """The values a (possibly list-wrapped) Literal annotation accepts."""
    while typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    assert typing.get_origin(annotation) is typing.Literal, annotation
    return typing.get_args(annotation)


def test_the_spec_accepts_exactly_the_catalogs_and_the_runners_choices():
    assert _literal_values(GridSpec.model_fields["binarizer"].annotation) == catalog.BINARIZER_NAMES
    # every weight rule, and "paired" (each binarizer with its own authors' rule)
    assert _literal_values(RecipeSpec.model_fields["weight_grad"].annotation) == catalog.SPEC_WEIGHT_GRADS
    assert catalog.SPEC_WEIGHT_GRADS == catalog.WEIGHT_GRADS + (catalog.WEIGHT_GRAD_PAIRED,)
    assert RecipeSpec.model_fields["weight_grad"].default == catalog.WEIGHT_GRAD_DEFAULT == "authors"
    assert _literal_values(ResourcesSpec.model_fields["runner"].annotation) == runners.RUNNER_NAMES == ("train", "tune")
    assert ResourcesSpec.model_fields["runner"].default == runners.DEFAULT_RUNNER == "train"
    assert GridSpec.model_fields["rho"].default == [catalog.RHO_DEFAULT]


def test_the_published_schema_lists_the_same_choices():
    # what the API's OpenAPI page and /openapi.json show a client (service.schemas embeds this spec)
    defs = ExperimentSpec.model_json_schema()["$defs"]
    assert tuple(defs["GridSpec"]["properties"]["binarizer"]["items"]["enum"]) == catalog.BINARIZER_NAMES
    assert tuple(defs["RecipeSpec"]["properties"]["weight_grad"]["enum"]) == catalog.SPEC_WEIGHT_GRADS
    assert tuple(defs["ResourcesSpec"]["properties"]["runner"]["enum"]) == runners.RUNNER_NAMES


def _training_cli() -> argparse.ArgumentParser:
    """The parser ``python -m sibnn.train`` builds (caught as it parses an empty command line)."""
    import sibnn.train

    caught = {}
    real = argparse.ArgumentParser.parse_args

    def catch(self, args=None, namespace=None):
        caught["parser"] = self
        return real(self, [], namespace)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch):
        sibnn.train.parse_args([])
    return caught["parser"]


def test_the_training_command_line_offers_the_catalogs_own_tuples():
    actions = {a.dest: a for a in _training_cli()._actions}
    assert actions["binarizer"].choices is catalog.BINARIZER_NAMES
    assert actions["weight_grad"].choices is catalog.WEIGHT_GRADS
    assert actions["weight_grad"].default == catalog.WEIGHT_GRAD_DEFAULT
    assert actions["init"].choices is catalog.INITS
    assert actions["rho"].default == catalog.RHO_DEFAULT


def test_the_rho_range_is_the_catalogs_at_both_ends_in_the_spec_and_the_library():
    from sibnn.quant import SiBinarize
    from sibnn.trial import TrialConfig

    lo, hi = catalog.RHO_RANGE
    assert (lo, hi) == (0.0, 1.0)  # METHOD.md §1: ρ ∈ [0, 1]
    for inside in (lo, hi):
        assert catalog.check_rho(inside) == inside
        assert parse_spec({**BASE, "grid": {**BASE["grid"], "rho": [inside]}}).grid.rho == [inside]
        TrialConfig(dataset="digits", rho=inside)
        SiBinarize(2, rho=inside)
    for outside in (lo - 1e-6, hi + 1e-6):
        with pytest.raises(ValueError, match=re.escape("rho must be in [0, 1]")):
            catalog.check_rho(outside)
        with pytest.raises(SpecError) as e:
            parse_spec({**BASE, "grid": {**BASE["grid"], "rho": [outside]}})
        assert "rho must be in [0, 1]" in dict(e.value.errors)["grid.rho"]
        with pytest.raises(ValueError, match=re.escape("rho must be in [0, 1]")):
            TrialConfig(dataset="digits", rho=outside)
        with pytest.raises(ValueError, match=re.escape("rho must be in [0, 1]")):
            SiBinarize(2, rho=outside)


def test_an_unused_rho_names_the_binarizers_it_is_for_from_the_catalog():
    with pytest.raises(SpecError) as e:
        parse_spec({**BASE, "grid": {"arch": ["digits_cnn"], "binarizer": ["sign"], "rho": [0.3]}})
    msg = dict(e.value.errors)["grid.rho"]
    assert catalog.RHO_BINARIZERS == ("sibnn", "sibnn_layer")
    assert "only used by the sibnn, sibnn_layer binarizers" in msg and "add 'sibnn'" in msg


# --- grep level: a private copy of a definition fails here ---------------------------------------------------------

PACKAGES = ("sibnn", "jobs", "service", "console")
# (what, pattern, the files allowed to hold it)
DEFINITIONS = [
    ("the ρ range as a literal", re.compile(r"RHO_RANGE\s*=|\b0(?:\.0)?\s*<=?\s*[\w.]*rho\w*\s*<=?\s*1(?:\.0)?\b"),
     {"sibnn/catalog.py"}),
    ("the ρ range's message", re.compile(r"rho must be in \["), {"sibnn/catalog.py"}),
    ("the weight-gradient rules as a list", re.compile(r"""["']authors["']\s*,\s*["']ste["']"""),
     {"sibnn/catalog.py"}),
    ("the runners as a list", re.compile(r"""["']train["']\s*,\s*["']tune["']"""), set()),
    ("a test of the runner's name",
     re.compile(r"""\brunner\s*[!=]=\s*["']|["'](?:train|tune)["']\s*[!=]=\s*[\w.]*runner"""), set()),
]
# What the patterns find that is not a copy of the range check: the tables' "an intermediate ρ" (strictly inside
# the range). A ratchet: when one goes, its entry must go too (the last test says so).
NOT_YET_ONE = {
    "the ρ range as a literal": {"jobs/results.py"},
}


def _holders(pattern: re.Pattern) -> set[str]:
    return {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if pattern.search(p.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("what,pattern,allowed", DEFINITIONS, ids=[d[0] for d in DEFINITIONS])
def test_each_definition_is_written_once(what, pattern, allowed):
    extra = _holders(pattern) - allowed - NOT_YET_ONE.get(what, set())
    assert not extra, f"{what} is written again in {sorted(extra)}: import it from where it is defined"


@pytest.mark.parametrize("what", sorted(NOT_YET_ONE))
def test_the_known_copies_are_still_there_so_the_list_shrinks_when_they_go(what):
    pattern = next(p for w, p, _ in DEFINITIONS if w == what)
    gone = NOT_YET_ONE[what] - _holders(pattern)
    assert not gone, f"{sorted(gone)} no longer hold {what}: remove them from NOT_YET_ONE"


def test_the_grep_finds_a_private_copy():
    # the check itself can fail: copies as they were written before (the layers' check, the spec's message, a
    # weight-gradient list, the spec's runner list and the sweep's runner tests)
    old = ("        if not 0.0 <= rho <= 1.0:\n", 'raise ValueError(f"rho must be in [0, 1], got {bad}")\n',
           'WEIGHT_GRADS = ("authors", "ste")\n', 'RUNNERS = ("train", "tune")\n',
           'if spec.resources.runner == "train":\n')
    for (what, pattern, _), text in zip(DEFINITIONS, old, strict=True):
        assert pattern.search(text), what
