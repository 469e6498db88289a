"""Models are looked up by name from this explicit registry: ``@register("conv_ae")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ae_anomaly.models.base import AutoEncoder

Builder = Callable[[Any, int, int], AutoEncoder]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register a builder ``(model_config, n_channels, window) -> AutoEncoder`` under a name."""

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def available_models() -> list[str]:
    """Names of every registered model."""
    return sorted(_REGISTRY)


def build_model(cfg: Any, n_channels: int, window: int) -> AutoEncoder:
    """Build the network named by ``cfg.name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        builder = _REGISTRY[cfg.name]
    except KeyError:
        raise ValueError(
            f"unknown model '{cfg.name}'; valid models: {', '.join(available_models())}"
        ) from None
    return builder(cfg, n_channels, window)
