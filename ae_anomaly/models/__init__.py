"""Networks, one file per family; importing this package registers them all."""

from ae_anomaly.models import (  # noqa: F401  (registration side effect)
    contractive,
    conv_ae,
    cvae,
    denoising,
    dense_ae,
    rae,
    vae,
)
from ae_anomaly.models.base import AEOutput, AutoEncoder, Samples, iter_batches
from ae_anomaly.models.registry import available_models, build_model, register

__all__ = ["AEOutput", "AutoEncoder", "Samples", "available_models", "build_model",
           "iter_batches", "register"]
