"""Model families, each defined once with a pluggable normalization, and their registry."""

# Importing a family module registers its models.
from mimicnorm_deploy.training.models import mobilenetv2, resnet, shufflenetv2, squeezenet, vgg  # noqa: F401
from mimicnorm_deploy.training.models.describe import describe_models
from mimicnorm_deploy.training.models.registry import STEMS, create_model, list_models, register_model

__all__ = ["STEMS", "create_model", "describe_models", "list_models", "register_model"]
