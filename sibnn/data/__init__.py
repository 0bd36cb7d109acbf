"""Input pipelines: in-memory tensors for the small datasets (digits, MNIST-5k, Fashion-MNIST, MNIST, CIFAR-10) and
NVIDIA DALI pipelines for ImageNet-format data (folder or webdataset), sharded by world rank for distributed
training."""
from sibnn.data.small import DatasetError, TensorLoader, load_small_dataset, small_loaders

__all__ = ["DatasetError", "TensorLoader", "load_small_dataset", "small_loaders", "ImageNetLoader"]


def __getattr__(name):
    # DALI is imported only when an ImageNet loader is asked for: the small-data path must not pay for it.
    if name == "ImageNetLoader":
        from sibnn.data.imagenet import ImageNetLoader
        return ImageNetLoader
    raise AttributeError(name)
