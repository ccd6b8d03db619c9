"""KL coefficient controllers for the per-token KL penalty of PPO: a fixed beta, and the adaptive
controller of Ziegler et al. (2019) that steers the measured KL toward a target."""

import math

from . import _validate as V


class FixedKLController:
    """A constant KL coefficient ``value``."""

    def __init__(self, beta: float) -> None:
        self.value = V.number("beta", beta, min_value=0.0)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No change; returns the coefficient."""
        return self.value


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller:
    ``beta *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``."""

    def __init__(self, beta: float, target: float, horizon: float) -> None:
        self.value = V.number("beta", beta, min_value=0.0)
        self.target = V.number("target", target, min_value=0.0, strict=True)
        self.horizon = V.number("horizon", horizon, min_value=0.0, strict=True)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move the coefficient towards the KL target; returns the new coefficient.

        The step factor ``1 + error * n_steps / horizon`` is kept in [0.5, 2] (``n_steps`` larger
        than the horizon would otherwise flip beta's sign or blow it up), so beta stays positive
        and finite (a positive beta stays positive). A NaN or infinite ``current_kl`` raises
        ValueError and leaves beta unchanged.
        """
        kl = float(current_kl)
        if not math.isfinite(kl):
            raise ValueError(f"`current_kl` must be finite, got {kl} (beta stays {self.value})")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"`n_steps` must be a non-negative int, got {n_steps!r}")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= min(max(1.0 + error * n_steps / self.horizon, 0.5), 2.0)
        return self.value
