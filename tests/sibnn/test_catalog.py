"""sibnn.catalog, the one torch-free source of facts: the registry, the binarizers and the exporter agree with it,
and the summaries file the API reads is current."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sibnn import catalog
from sibnn.infer import ExportError, pack_model
from sibnn.models import create_model, list_models, model_info
from sibnn.models.summaries import compute
from sibnn.quant import BINARIZERS, SiBinarize, make_activation
from sibnn.summary import summarize
from tests.sibnn.test_infer import randomize  # trained-like θ, s and BatchNorm statistics

ROOT = Path(__file__).resolve().parents[2]


def test_the_registry_builds_exactly_the_catalogued_models_with_their_facts():
    assert list_models() == catalog.model_names()
    for name in list_models():
        info, facts = model_info(name), catalog.MODELS[name]
        assert (info.dataset, info.input_size, info.in_channels, info.num_classes, info.description,
                info.flat_input) == (facts.dataset, facts.input_size, facts.in_channels, facts.num_classes,
                                     facts.description, facts.flat_input)
        assert facts.dataset in catalog.DATASETS


def test_the_binarizer_table_matches_what_the_layers_and_the_exporter_do():
    assert tuple(BINARIZERS) == catalog.BINARIZER_NAMES
    for name, b in catalog.BINARIZERS.items():
        act = make_activation(name, 4, rho=0.7)
        assert isinstance(act, SiBinarize) == b.takes_rho
        if b.takes_rho:
            assert act.rho == 0.7
        model = randomize(create_model("digits_cnn", binarizer=name), 0)
        if b.packable:
            packed = pack_model(model)
            x = torch.randn(3, 1, 8, 8)
            with torch.no_grad():
                torch.testing.assert_close(packed(x), model(x), rtol=1e-4, atol=1e-4)
        else:
            with pytest.raises(ExportError):
                pack_model(model)
    assert catalog.RHO_DEFAULT == 0.3 and catalog.takes_rho("sibnn") and not catalog.takes_rho("sign")
    with pytest.raises(ValueError, match="choose one of"):
        catalog.takes_rho("xnor")


def test_the_stored_summaries_of_a_small_model_match_a_fresh_forward_pass():
    for b in catalog.BINARIZER_NAMES:
        fresh = summarize(create_model("digits_cnn", binarizer=b), (1, 1, 8, 8)).to_dict()
        stored = catalog.summary("digits_cnn", b)
        assert stored["totals"] == fresh["totals"]
        assert [r["name"] for r in stored["rows"]] == [r["name"] for r in fresh["rows"]]


@pytest.mark.slow
def test_the_summaries_file_is_current():
    """`python -m sibnn.models.summaries --check` (about a minute): regenerate every summary and compare."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "sibnn.models.summaries", "--check"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "is current" in r.stdout


def test_compute_covers_every_model_and_binarizer():
    # the --check above compares text; this pins the shape of what it writes without the minute of forward passes
    data = catalog._summaries()
    assert set(data["summaries"]) == set(catalog.model_names())
    for per in data["summaries"].values():
        assert set(per) == set(catalog.BINARIZER_NAMES)
    assert callable(compute)


def test_the_method_choices_are_defined_here_with_their_defaults_first():
    lo, hi = catalog.RHO_RANGE
    assert lo <= catalog.RHO_DEFAULT <= hi and catalog.check_rho(hi) == hi
    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\], got 1.5"):
        catalog.check_rho(1.5)
    assert catalog.WEIGHT_GRAD_DEFAULT == catalog.WEIGHT_GRADS[0] == "authors"  # the authors' rule; ste: ablation
    # the binarizers ρ shapes, in the table's order: what the spec's rule and the ρ figure use
    assert catalog.RHO_BINARIZERS == tuple(n for n in catalog.BINARIZER_NAMES if catalog.takes_rho(n))
    assert catalog.RHO_BINARIZERS == ("sibnn", "sibnn_layer")
