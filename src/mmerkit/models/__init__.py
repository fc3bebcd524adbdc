"""Importing this package registers every model (each module registers itself)."""

from mmerkit.models import (
    amp,  # noqa: F401
    baselines,  # noqa: F401
    carat,  # noqa: F401
    classic,  # noqa: F401
    lddu,  # noqa: F401
    ramer,  # noqa: F401
    tailor,  # noqa: F401
    univa,  # noqa: F401
)
from mmerkit.models.base import (
    MMERModel,
    ModelOutput,
    create_model,
    list_models,
    register_model,
)

__all__ = ["MMERModel", "ModelOutput", "create_model", "list_models", "register_model"]
