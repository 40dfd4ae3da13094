"""The settings of the weight-free control images (:mod:`cartoonify.edgemaps`); no torch, no numpy.

Their defaults are declared here once: the stylize settings and the tiny ControlNet's build read them.
"""

from __future__ import annotations

from dataclasses import dataclass

PREPROCESSORS = ("canny", "lineart")


@dataclass(frozen=True)
class CannySettings:
    """Canny's parameters: Gaussian ``sigma`` (pixels), and the hysteresis thresholds as quantiles of the
    gradient magnitude (``low`` < ``high`` in (0, 1))."""

    sigma: float = 1.0
    low: float = 0.7
    high: float = 0.9

    def __post_init__(self):
        if not (0 < self.low < self.high < 1):
            raise ValueError(f"canny thresholds need 0 < low < high < 1, got low={self.low}, high={self.high}")
        if self.sigma < 0:
            raise ValueError(f"canny sigma must be >= 0, got {self.sigma}")


@dataclass(frozen=True)
class LineartSettings:
    """The difference-of-Gaussians line detector: blur ``sigma`` (pixels), the share of the strongest
    response kept as a line (``threshold``), and the ``gain`` that brightens faint lines."""

    sigma: float = 6.0
    threshold: float = 0.1
    gain: float = 4.0

    def __post_init__(self):
        if self.sigma <= 0 or not (0 <= self.threshold < 1) or self.gain <= 0:
            raise ValueError(f"lineart needs sigma > 0, 0 <= threshold < 1, gain > 0; got {self}")
