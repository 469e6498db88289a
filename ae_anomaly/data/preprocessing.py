"""Per-channel scaling, fitted on training data only and saved with the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np


@dataclass
class Scaler:
    """Standard, robust (median / IQR) or min-max scaling per channel, with optional clipping.

    Fitted state ends in ``_``; ``to_dict`` / ``from_dict`` round-trip it through JSON.
    """

    kind: Literal["standard", "robust", "minmax"] = "standard"
    clip: float | None = 20.0
    center_: np.ndarray | None = field(default=None, repr=False)
    scale_: np.ndarray | None = field(default=None, repr=False)

    def fit(self, values: np.ndarray) -> Scaler:
        """Fit on a (T, C) array of training rows."""
        v = np.asarray(values, dtype=np.float64)
        if self.kind == "standard":
            center, scale = v.mean(axis=0), v.std(axis=0)
        elif self.kind == "robust":
            q1, med, q3 = np.percentile(v, [25, 50, 75], axis=0)
            center, scale = med, q3 - q1
            # A channel constant on most rows has IQR 0: fall back to its standard deviation.
            scale = np.where(scale > 0, scale, v.std(axis=0))
        else:
            center, scale = v.min(axis=0), v.max(axis=0) - v.min(axis=0)
        self.center_ = center
        self.scale_ = np.where(scale > 1e-12, scale, 1.0)
        return self

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale a (T, C) array with the fitted statistics (float32)."""
        if self.center_ is None or self.scale_ is None:
            raise RuntimeError("Scaler is not fitted")
        out = (np.asarray(values, dtype=np.float64) - self.center_) / self.scale_
        if self.clip is not None:
            np.clip(out, -self.clip, self.clip, out=out)
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {"kind": self.kind, "clip": self.clip,
                "center": None if self.center_ is None else self.center_.tolist(),
                "scale": None if self.scale_ is None else self.scale_.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        """Rebuild from ``to_dict`` output."""
        s = cls(kind=d["kind"], clip=d["clip"])
        s.center_ = None if d["center"] is None else np.asarray(d["center"], dtype=np.float64)
        s.scale_ = None if d["scale"] is None else np.asarray(d["scale"], dtype=np.float64)
        return s


def identity_scaler(n_channels: int) -> Scaler:
    """A fitted :class:`Scaler` that leaves values unchanged (no clipping)."""
    s = Scaler("standard", None)
    s.center_ = np.zeros(n_channels)
    s.scale_ = np.ones(n_channels)
    return s
