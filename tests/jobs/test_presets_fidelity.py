"""The ImageNet presets train with the authors' per-GPU BatchNorm batch (docs/fidelity.md row 19).

The authors' README trains with ``CUDA_VISIBLE_DEVICES=0,1,2,3 python main_sibnn_learn.py ...``: batch 256 (``-b``
default) under ``nn.DataParallel`` over 4 GPUs, so each GPU's BatchNorm normalises 64 images. Here a worker is one
GPU and one DDP rank (no SyncBatchNorm), so the per-GPU BN batch is the global batch ÷ workers_per_trial, as the
trial loop computes it. Eight GPUs (32 per GPU) is the named option, selected by a resources override.
"""
import pytest

from jobs.presets import PRESETS, preset
from jobs.train_loop import trial_config

AUTHORS_GLOBAL_BATCH = 256   # main_sibnn_learn.py: `-b/--batch-size` default 256 (and the paper's batch)
AUTHORS_GPUS = 4             # README.md: CUDA_VISIBLE_DEVICES=0,1,2,3, nn.DataParallel over every visible GPU
AUTHORS_PER_GPU_BATCH = AUTHORS_GLOBAL_BATCH // AUTHORS_GPUS   # 64
EIGHT_GPUS = {"workers_per_trial": 8, "gpus_per_worker": 1, "cpus_per_worker": 8}   # the named option

# the Si-BNN paper's ImageNet presets (its recipes); imagenet-beyond trains with ReActNet's batch 512 (its run.sh)
IMAGENET = sorted(name for name, p in PRESETS.items()
                  if p["dataset"]["kind"] == "imagenet" and p["recipe"]["name"] in ("aaai", "tnnls"))


def _per_worker_batch(spec) -> int:
    """The batch each rank's loader and BatchNorm see: what the trial loop derives from the spec."""
    return trial_config(spec, spec.trials()[0]).recipe_for(spec.resources.workers_per_trial).batch_size


def test_there_are_imagenet_presets_to_check():
    assert IMAGENET == ["imagenet-alexnet-rho", "imagenet-comparison", "imagenet-paper-comparison"]


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_presets_give_each_gpu_the_authors_64_images(name):
    spec = preset(name, root="/data/imagenet")
    r = spec.resources
    assert spec.recipe.batch_size == AUTHORS_GLOBAL_BATCH
    assert r.gpus_per_worker == 1, "one GPU per worker: a worker's batch is one GPU's BatchNorm batch"
    assert spec.recipe.batch_size % r.workers_per_trial == 0, "every GPU gets the same number of images"
    assert spec.recipe.batch_size // r.workers_per_trial == AUTHORS_PER_GPU_BATCH
    assert r.workers_per_trial == AUTHORS_GPUS
    assert _per_worker_batch(spec) == AUTHORS_PER_GPU_BATCH


@pytest.mark.parametrize("name", IMAGENET)
def test_eight_gpus_is_the_named_option_with_32_images_per_gpu(name):
    spec = preset(name, root="/data/imagenet", resources=EIGHT_GPUS)
    assert spec.resources.workers_per_trial == 8 and spec.recipe.batch_size == AUTHORS_GLOBAL_BATCH
    assert _per_worker_batch(spec) == 32
    assert preset(name, root="/data/imagenet").resources.workers_per_trial == AUTHORS_GPUS, "the override copies"
