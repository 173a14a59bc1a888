"""The ``dp-stats`` head at a site: release its class statistics once, with the Gaussian mechanism.

What is released and its sensitivity are :mod:`common.dp_stats`'s; the noise comes from a
generator seeded with the site's OS entropy (:mod:`client.training.privacy.randomness`). Without DP
(a researcher's non-private run) the exact statistics are sent.
"""

from __future__ import annotations

import numpy as np

from common.dp_stats import feature_stats, noised


def release(x: np.ndarray, y: np.ndarray, *, num_classes: int, solver: str, noise_multiplier: float, dp: bool,
            noise_seed: int | None = None) -> dict[str, np.ndarray]:
    """The arrays a site sends: the statistics ``solver`` needs, noised when ``dp``."""
    from client.training.privacy.randomness import numpy_generator

    stats = feature_stats(x, y, num_classes)
    if dp:
        stats = noised(stats, noise_multiplier, numpy_generator(seed=noise_seed), solver=solver)
    return stats.to_arrays(solver)
