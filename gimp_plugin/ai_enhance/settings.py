"""The plug-in's options as plain values, independent of GIMP, and their translation to the wire.

GIMP keeps them in the procedure's config (which also remembers the last values); `run` copies them
into `Settings` once, so the rest of the plug-in never reads GObject properties.
"""

from __future__ import annotations

from dataclasses import dataclass

# Choice ids of the "scale" argument; "custom" takes the factor from "custom-scale".
SCALE_CHOICES = {"x1": 1.0, "x2": 2.0, "x4": 4.0, "custom": None}
ALPHA_CHOICES = ("model", "bicubic")
MIN_SCALE = 1.0
MAX_SCALE = 8.0
MAX_TILE = 4096


@dataclass(frozen=True)
class Settings:
    model: str = ""  # empty: the server's default model
    scale_choice: str = "x4"
    custom_scale: float = 3.0
    strength: float = 1.0  # used only for models with a PSNR/GAN pair
    colour_fidelity: bool = False
    auto_contrast: float = 0.0
    alpha_mode: str = "model"
    tile: int = 0  # 0: the server picks
    server: str = ""  # empty: the address the installer recorded

    @property
    def scale(self) -> float:
        """The output scale factor the choice stands for."""
        if self.scale_choice not in SCALE_CHOICES:
            raise ValueError(f"unknown scale {self.scale_choice!r}; choose from {', '.join(SCALE_CHOICES)}")
        factor = SCALE_CHOICES[self.scale_choice]
        if factor is None:
            factor = self.custom_scale
        if not MIN_SCALE <= factor <= MAX_SCALE:
            raise ValueError(f"the scale must be between {MIN_SCALE:g} and {MAX_SCALE:g}, got {factor:g}")
        return factor
