"""The aaai recipe's lr steps as fractions of the run (docs/fidelity.md row 10).

At 100 epochs the fractions 0.4 / 0.8 are the paper's rule, ÷10 at epochs 40 and 80 (0-based: epochs 0–39 at 1e-3,
40–79 at 1e-4, 80–99 at 1e-5, as the authors' ``adjust_learning_rate`` gives them). At other run lengths the
scaling is this project's choice: milestone m falls at epoch ``round(m · epochs)``, the lr changes only at epoch
boundaries, and the rounding shows at small epoch counts (a 1-epoch run starts already ÷10).
"""
import math

import pytest

from sibnn.recipe import get_recipe, lr_factor

SPE = 7   # steps per epoch: the factor is constant within an epoch


def _per_epoch(epochs: int) -> list[float]:
    r = get_recipe("aaai", epochs=epochs)
    factors = [[lr_factor(r, e * SPE + i, SPE) for i in range(SPE)] for e in range(epochs)]
    assert all(len(set(f)) == 1 for f in factors), "the lr changes only at epoch boundaries"
    return [f[0] for f in factors]


def _exponents(epochs: int) -> list[int]:
    """How many ÷10 steps each epoch has passed."""
    return [round(-math.log10(f)) for f in _per_epoch(epochs)]


def test_at_100_epochs_it_is_the_papers_rule():
    assert _exponents(100) == [0] * 40 + [1] * 40 + [2] * 20
    assert _per_epoch(100)[40] == pytest.approx(0.1) and _per_epoch(100)[80] == pytest.approx(0.01)


@pytest.mark.parametrize("epochs, first, second", [(200, 80, 160), (15, 6, 12), (10, 4, 8), (8, 3, 6), (6, 2, 5),
                                                   (5, 2, 4), (3, 1, 2)])
def test_other_lengths_step_at_the_rounded_fractions(epochs, first, second):
    assert (round(0.4 * epochs), round(0.8 * epochs)) == (first, second)
    assert _exponents(epochs) == [0] * first + [1] * (second - first) + [2] * (epochs - second)


def test_rounding_at_very_short_runs():
    assert _exponents(2) == [0, 1]   # 0.8 → epoch 1, 1.6 → epoch 2: the second step never comes
    assert _exponents(1) == [1]      # 0.4 → epoch 0: a 1-epoch run trains at lr/10 throughout
