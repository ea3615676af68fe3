"""Model families, each defined once with a pluggable normalization, and their registry."""

from mimicnorm_deploy.models import resnet as _resnet  # noqa: F401  (registers the ResNets)
from mimicnorm_deploy.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
