"""Where a site's DP randomness comes from: its own operating-system entropy.

The sample-level guarantee holds against the server only if the server cannot know the
noise a site added, nor which examples formed each Poisson batch (knowing the batches
undoes the amplification by sampling). So both are drawn from generators seeded with
:func:`secrets.randbits` at the site, fresh for every training call (every round of every
run), and never from the run config, a message or a file the server can read.

``torchcsprng`` (what Opacus' ``secure_mode`` needs) has no build for current torch, so the
generators are torch's own (Philox on CUDA, Mersenne Twister on CPU) with a secret
63-bit seed, and Opacus' defence against floating-point attacks on the Gaussian sampler
(each noise value the sum of 2n draws, arXiv:2112.05307) is switched on by
:func:`harden_noise`. The residual risk is stated in the README: the generators are not
cryptographic, so a party that saw many raw draws could in principle recover a state; a
site's draws never leave it except summed into its noised update.

A run may ask for reproducible noise (run-config ``reproducible-noise = true``, simulations
only): the seed is then a function of the run's seed, the round and the site name, so it
protects nothing against whoever knows them. A deployed site's policy refuses such a run
(:mod:`client.training.privacy.policy`).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def secret_seed() -> int:
    """A fresh 63-bit seed from the operating system's entropy source."""
    return secrets.randbits(63)


def reproducible_seed(run_seed: int, server_round: int, site: str) -> int:
    """The seed a run with ``reproducible-noise = true`` uses (distinct per site and round)."""
    digest = hashlib.sha256(f"{run_seed}\0{server_round}\0{site}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class DPGenerators:
    """The two generators one DP training call draws from."""

    sampler: torch.Generator  # Poisson batch sampling (on the CPU, where Opacus' sampler runs)
    noise: torch.Generator  # Gaussian noise (on the training device)
    secret: bool  # True when seeded from OS entropy, False when reproducible


def dp_generators(device: torch.device, *, seed: int | None = None) -> DPGenerators:
    """Generators for one DP training call.

    Parameters
    ----------
    device
        The device the model trains on (the noise generator lives there).
    seed
        ``None`` (every deployment): two independent secret seeds from OS entropy. An
        integer (reproducible noise, simulations only): both derive from it.
    """
    import torch

    secret = seed is None
    s_sampler = secret_seed() if secret else seed
    s_noise = secret_seed() if secret else (seed * 6_364_136_223_846_793_005 + 1) % 2**63
    sampler = torch.Generator().manual_seed(s_sampler)
    noise = torch.Generator(device=device).manual_seed(s_noise)
    return DPGenerators(sampler=sampler, noise=noise, secret=secret)


def harden_noise(optimizer: object) -> None:
    """Turn on Opacus' 2n-sample Gaussian (``secure_mode``'s floating-point defence) on a DP optimizer."""
    if not hasattr(optimizer, "secure_mode"):
        raise TypeError("not an Opacus DPOptimizer")
    optimizer.secure_mode = True  # type: ignore[attr-defined]


def numpy_generator(*, seed: int | None = None):  # noqa: ANN201 - numpy.random.Generator
    """A numpy generator for site-side noise (the dp-stats release): secret unless ``seed`` is given."""
    import numpy as np

    return np.random.Generator(np.random.PCG64(secrets.randbits(128) if seed is None else seed))
