"""recipe.weight_grad: the authors' rule is the default of every spec and preset; the ablation is named; a bad value
names the field."""
import pytest

from jobs.presets import PRESETS, preset
from jobs.spec import SpecError, parse_spec
from sibnn.catalog import DATASETS

BASE = {"name": "t", "dataset": {"kind": "digits"}, "grid": {"arch": ["digits_cnn"], "binarizer": ["sibnn"]}}


def test_weight_grad_defaults_to_the_authors_rule_in_specs_and_presets():
    assert parse_spec(BASE).recipe.weight_grad == "authors"
    for name in PRESETS:
        packaged = DATASETS[PRESETS[name]["dataset"]["kind"]].embedded  # these take no root
        # the comparison presets say so by name: each method with its own authors' rule (docs/fidelity.md row 46)
        expected = "paired" if name in ("imagenet-comparison", "imagenet-beyond") else "authors"
        assert preset(name, root=None if packaged else "/data/x").recipe.weight_grad == expected, name


def test_weight_grad_ste_is_selectable_and_unknown_values_name_the_field():
    assert parse_spec({**BASE, "recipe": {"weight_grad": "ste"}}).recipe.weight_grad == "ste"
    with pytest.raises(SpecError) as e:
        parse_spec({**BASE, "recipe": {"weight_grad": "xnor"}})
    assert "recipe.weight_grad" in dict(e.value.errors)
