"""Networks, one file per family; importing this package registers them all."""

from ae_anomaly.models import conv_ae, dense_ae  # noqa: F401  (registration side effect)
from ae_anomaly.models.base import AEOutput, AutoEncoder
from ae_anomaly.models.registry import available_models, build_model, register

__all__ = ["AEOutput", "AutoEncoder", "available_models", "build_model", "register"]
