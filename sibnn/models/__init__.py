"""Architectures of METHOD.md §3, registered by name. Importing this package registers them all."""
from sibnn.models.registry import ModelInfo, create_model, list_models, model_info, register_model
from sibnn.models import alexnet, react, resnet, small, standard_resnet, vgg  # noqa: F401  (registration side effects)

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]
