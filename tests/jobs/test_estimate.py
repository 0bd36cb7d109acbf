"""GPU-hours estimates (jobs.estimate): the anchor, the scaling by MACs, the loader cap, the dataset sizes."""
import pytest

from jobs import estimate
from jobs.presets import preset
from jobs.spec import parse_spec


def _imagenet(tmp_path, arch: str, binarizer: str, epochs: int = 100, image_size: int | None = None):
    ds = {"kind": "imagenet", "root": str(tmp_path)} | ({"image_size": image_size} if image_size else {})
    return parse_spec({"name": "e", "dataset": ds, "grid": {"arch": [arch], "binarizer": [binarizer]},
                       "recipe": {"epochs": epochs}})


def test_resnet18_on_imagenet_is_the_anchor_rate_over_train_and_a_third_of_val(tmp_path):
    (t,) = estimate.estimate(_imagenet(tmp_path, "resnet18", "sibnn"))
    # by hand: 100 epochs × (1,281,167 + 50,000 / 3) images / 10,425 images/s / 3600 s
    assert t.gpu_hours == pytest.approx(3.4581232791544543, rel=1e-12)
    assert t.images_per_s == 10_425.0 and t.epochs == 100


def test_a_model_with_more_macs_is_slower_in_proportion_and_a_small_one_is_capped_by_the_loader(tmp_path):
    (vgg,) = estimate.estimate(_imagenet(tmp_path, "vgg_variant", "sibnn"))
    ratio = estimate.macs("vgg_variant", "sibnn") / estimate.macs("resnet18", "sibnn")
    assert ratio > 5
    assert vgg.images_per_s == pytest.approx(10_425.0 / ratio)
    (alex,) = estimate.estimate(_imagenet(tmp_path, "alexnet", "sibnn"))
    assert alex.images_per_s == estimate.LOADER_IMAGES_PER_S  # 0.6× ResNet-18's MACs would beat the loader
    assert alex.gpu_hours == pytest.approx(2.592473406097022, rel=1e-12)  # 100 × (1,281,167 + 50,000/3) / 13,906 / 3600


def test_full_precision_uses_its_own_anchor_and_epochs_and_crop_area_scale_the_cost(tmp_path):
    (fp,) = estimate.estimate(_imagenet(tmp_path, "resnet18", "fp"))
    assert fp.images_per_s == 11_835.0
    (short,) = estimate.estimate(_imagenet(tmp_path, "resnet18", "sibnn", epochs=10))
    assert short.gpu_hours == pytest.approx(3.4581232791544543 / 10, rel=1e-12)
    (big,) = estimate.estimate(_imagenet(tmp_path, "vgg_variant", "sibnn", image_size=448))
    (small,) = estimate.estimate(_imagenet(tmp_path, "vgg_variant", "sibnn"))
    assert big.gpu_hours == pytest.approx(4 * small.gpu_hours)  # twice the side, four times the MACs


def test_embedded_data_uses_its_fixed_sizes_and_a_preset_gets_one_estimate_per_trial():
    spec = preset("mnist5k")
    est = estimate.estimate(spec)
    assert [t.trial_id for t in est] == [t.trial_id for t in spec.trials()]
    assert estimate.dataset_sizes(spec) == (4000, 1000)
    s = estimate.summary(spec)
    assert s["total"] == pytest.approx(sum(t.gpu_hours for t in est))
    assert s["per_trial_max"] == max(s["trials"].values()) and "H100" in s["assumes"]
    train = preset("fashion-mnist")
    assert estimate.dataset_sizes(train) == (10_000, 10_000)  # the spec's train_size, the whole test set


def test_a_distilled_trial_also_pays_for_its_teachers_forward_pass_and_the_teacher_trial_does_not():
    spec = preset("imagenet-beyond", root="/data/imagenet")
    by_id = {t.trial_id: t for t in estimate.estimate(spec)}
    student = estimate.model_images_per_s("resnet18_react", "sibnn")
    teacher = estimate.model_images_per_s("resnet34", "fp")
    step2 = by_id["resnet18_react-sibnn-rho0.3-s0-step2"]
    assert step2.images_per_s == pytest.approx(1 / (1 / student + 1 / (3 * teacher)))
    assert step2.images_per_s < student
    assert by_id["teacher-resnet34-fp-s0"].images_per_s == pytest.approx(teacher)
    assert len(by_id) == len(spec.trials()) == 13  # the teacher, then two steps for 2 binarizers × 3 seeds
