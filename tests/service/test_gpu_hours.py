"""The estimate of GPU time is in the answer to a POST, before anything runs, and the command line prints it."""
import pytest

from console.cli import gpu_hours_line
from jobs import estimate
from jobs.presets import preset
from tests.service.conftest import AUTH


def test_a_post_answers_the_estimated_gpu_hours_of_its_trials(offline_api, tmp_path):
    root = tmp_path / "home" / "data" / "imagenet"  # inside the offline service's data roots
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    spec = preset("imagenet-paper-comparison", root=str(root))
    r = offline_api.post("/experiments", json=spec.model_dump(mode="json"),
                         headers={**AUTH, "Idempotency-Key": "k-gpu"})
    assert r.status_code == 202, r.text
    est = r.json()["gpu_hours"]
    expected = {t.trial_id: t.gpu_hours for t in estimate.estimate(spec)}
    assert est["trials"] == pytest.approx(expected)
    assert est["per_trial_max"] == pytest.approx(max(expected.values())) and est["per_trial_max"] > 1
    assert offline_api.get(f"/experiments/{r.json()['id']}").json()["gpu_hours"] == est
    line = gpu_hours_line(est)
    assert f"up to {est['per_trial_max']:.3g} GPU-hours per trial" in line and "H100" in line
