"""Local training and evaluation on a site's tensors. Knows nothing of Flower.

DP-SGD is Opacus' ``PrivacyEngine.make_private`` with Poisson sampling. The noise and the
Poisson batches are drawn from generators seeded with the site's OS entropy
(:mod:`client.training.privacy.randomness`), never from ``settings.seed``, which the server
knows; ``settings.noise_seed`` makes them reproducible for simulations that ask. The accountant
is owned by the caller (the site's privacy ledger): this module reports the noise
multiplier, sample rate and number of optimizer steps it actually took, which is all an
accountant needs.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.training.losses import make_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1  # passes over the local training split
    batch_size: int = 32  # expected batch size (Poisson-sampled under DP)
    optimizer: str = "sgd"  # sgd | adam (Opacus privatises either)
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    dp: bool = False  # DP-SGD with Opacus
    noise_multiplier: float = 1.0  # DP noise multiplier
    max_grad_norm: float = 1.0  # DP per-sample clipping norm
    proximal_mu: float = 0.0  # FedProx proximal term; 0 = off
    grad_sample_mode: str = "hooks"  # Opacus per-sample gradient mode
    poisson_sampling: bool = True  # DP batches by Poisson sampling (what the accountant assumes)
    augment: bool = True  # random left/right flips (a per-sample transform, DP-safe)
    seed: int = 0  # model-side randomness (augmentation flips, dropout); not part of the DP guarantee
    noise_seed: int | None = None  # DP noise and Poisson sampling: None = secret, from OS entropy (see below)
    accountant: str = "rdp"  # the run's accountant (Opacus' engine keeps one; the site ledger is authoritative)
    loss: str = "ce"  # local loss: ce | fedrs | logit-adjust | class-balanced (client.training.losses)
    fedrs_alpha: float = 0.5  # FedRS scale of absent classes' logits (loss = fedrs; 1 = ce)
    logit_tau: float = 1.0  # logit-adjustment strength (loss = logit-adjust)


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    loss: float  # mean training loss over the last epoch
    accuracy: float  # training accuracy over the last epoch
    steps: int  # optimizer steps taken
    sample_rate: float  # Poisson sample rate (batch_size / N) under DP, else 0
    noise_multiplier: float  # 0 without DP


@dataclass(frozen=True)
class EvalResult:
    num_examples: int
    loss: float
    accuracy: float
    probs: np.ndarray  # (N, C) softmax probabilities
    labels: np.ndarray  # (N,)


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int) -> DataLoader:
    ds = TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64)))
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=False)


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: TrainSettings,
    *,
    device: torch.device,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on (x, y); returns what the privacy ledger needs."""
    n = len(y)
    if n == 0:
        raise ValueError("no training examples at this site")
    torch.manual_seed(settings.seed)
    model.to(device).train()
    global_params = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu > 0 else None
    if settings.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
    elif settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=settings.learning_rate, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    else:
        raise ValueError(f"unknown optimizer {settings.optimizer!r}")
    loader = _loader(x, y, min(settings.batch_size, n), shuffle=True, seed=settings.seed)
    net: nn.Module = model
    sample_rate = 0.0
    criterion = make_loss(settings.loss, y, fedrs_alpha=settings.fedrs_alpha, logit_tau=settings.logit_tau)
    ghost = settings.dp and settings.grad_sample_mode == "ghost"
    if ghost and (settings.loss != "ce" or settings.proximal_mu > 0):
        raise ValueError("ghost clipping supports only the plain cross-entropy loss without a proximal term")
    if settings.dp:
        net, optimizer, criterion, loader = _make_private(model, optimizer, loader, criterion, settings, device)
        sample_rate = 1.0 / len(loader)
    flip_gen = torch.Generator().manual_seed(settings.seed + 1)
    steps, loss_sum, correct, seen = 0, 0.0, 0, 0
    for epoch in range(settings.epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch: the step is noise alone
                optimizer.zero_grad(set_to_none=True)
                for p in model.parameters():
                    if not p.requires_grad:
                        continue
                    if ghost:  # ghost's optimizer noises p.grad: an empty batch's clipped sum is zero
                        p.grad = torch.zeros_like(p)
                    else:  # the other modes clip per-sample gradients: zero samples (Opacus handles it)
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
                optimizer.step()
                steps += 1
                continue
            if settings.augment:
                flip = torch.rand(len(yb), generator=flip_gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = net(xb)
            loss = criterion(logits, yb)
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
                loss = loss + 0.5 * settings.proximal_mu * prox
            with warnings.catch_warnings():
                # Opacus' hooks fire on modules whose inputs need no grad (the first conv).
                warnings.filterwarnings("ignore", message="Full backward hook is firing.*")
                loss.backward()
            optimizer.step()
            steps += 1
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        if on_epoch is not None:
            on_epoch(epoch, loss_sum / max(seen, 1))
    if settings.dp:
        net.cleanup()  # removes Opacus' hooks and per-sample gradients; the model can be made private again
    loss_mean = loss_sum / max(seen, 1)
    if not math.isfinite(loss_mean):
        logger.warning("training loss is not finite; the update will likely be rejected by the server")
    return TrainResult(
        num_examples=n,
        loss=loss_mean,
        accuracy=correct / max(seen, 1),
        steps=steps,
        sample_rate=sample_rate,
        noise_multiplier=settings.noise_multiplier if settings.dp else 0.0,
    )


def _make_private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, criterion: Callable,
                  settings: TrainSettings, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer, Callable, DataLoader]:
    """Opacus' private model, optimizer, loss and Poisson loader, drawing from the site's secret generators."""
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    from client.training.privacy.randomness import dp_generators, harden_noise

    gens = dp_generators(device, seed=settings.noise_seed)
    if settings.poisson_sampling:  # Opacus' own Poisson loader, on our generator (make_private would use torch's global one)
        loader = DPDataLoader.from_data_loader(loader, generator=gens.sampler)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off: it needs torchcsprng, which has no build for current torch.
        # The generators above are seeded from OS entropy and harden_noise turns on its floating-point defence.
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(accountant=settings.accountant, secure_mode=False)
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=settings.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            poisson_sampling=False,  # the loader above already samples; nothing left for Opacus to replace
            noise_generator=gens.noise,
            grad_sample_mode=settings.grad_sample_mode,
            criterion=nn.CrossEntropyLoss(),  # used (wrapped) by ghost clipping only
        )
    if settings.grad_sample_mode == "ghost":  # ghost clipping also wraps the loss: its backward() runs both passes
        net, dp_optimizer, criterion, dp_loader = private
    else:
        net, dp_optimizer, dp_loader = private
    if settings.poisson_sampling:
        net.forbid_grad_accumulation()  # what make_private does for its own Poisson loader
    harden_noise(dp_optimizer)
    return net, dp_optimizer, criterion, dp_loader


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, device: torch.device, batch_size: int = 256) -> EvalResult:
    """Loss, accuracy and probabilities of ``model`` on (x, y)."""
    model.to(device).eval()
    if len(y) == 0:
        return EvalResult(0, float("nan"), float("nan"), np.zeros((0, 0), np.float32), y.astype(np.int64))
    probs, loss_sum = [], 0.0
    for xb, yb in _loader(x, y, batch_size, shuffle=False, seed=0):
        logits = model(xb.to(device))
        loss_sum += float(nn.functional.cross_entropy(logits, yb.to(device), reduction="sum"))
        probs.append(torch.softmax(logits, dim=1).cpu().numpy())
    p = np.concatenate(probs)
    return EvalResult(
        num_examples=len(y),
        loss=loss_sum / len(y),
        accuracy=float((p.argmax(1) == y).mean()),
        probs=p,
        labels=y.astype(np.int64),
    )
