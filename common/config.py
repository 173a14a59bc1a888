"""Run-wide configuration: ``[tool.flwr.app.config]`` parsed once into a frozen dataclass.

Flower hands the ServerApp and ClientApp a flat mapping of kebab-case keys with plain
values. :meth:`RunConfig.from_flower` turns it into a typed, validated object and rejects
unknown keys and out-of-range values with one clear message, before any work starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from common.errors import ConfigError

OPTIMIZERS = ("adam", "sgd")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
ACCOUNTANTS = ("rdp", "prv")
LOSSES = ("ce", "fedrs", "logit-adjust", "class-balanced")  # client.training.losses (common cannot import client)
GRAD_SAMPLE_MODES = ("auto", "hooks", "ew", "functorch", "ghost")  # Opacus modes; auto: per model
COMPRESSIONS = ("none", "fp16", "int8")  # common.compression.MODES
# Client-level DP with Flower's strategy wrappers (server.client_dp): clipping on the server or
# at the site (Flower's clipping mods), with a fixed or adaptive (Andrew et al. 2019) clipping norm.
CLIENT_DP = ("none", "fixed-server", "fixed-client", "adaptive-server", "adaptive-client")
CLIENT_DP_STRATEGIES = ("fedavg", "fedprox", "fedadam")  # the wrappers calibrate noise to a mean of updates
SECAGG_STRATEGIES = ("fedavg", "fedprox")  # aggregate = the weighted mean update, all SecAgg+ reveals
# The private part a site trains on a public encoder's features (README "Private learning"): none = the
# end-to-end model ``model`` (the study models); linear / mlp = a head trained with DP-SGD under the strategy;
# dp-stats = one Gaussian release of class statistics, summed and solved at the server; dp-stats+linear =
# that release as the start of DP-SGD rounds on a linear head; finetune = end-to-end DP-SGD from the encoder.
HEADS = ("none", "linear", "mlp", "dp-stats", "dp-stats+linear", "finetune")
STATS_HEADS = ("dp-stats", "dp-stats+linear")  # heads whose first round releases statistics
DP_STATS_SOLVERS = ("cosine", "means", "lda", "ridge")  # common.dp_stats.SOLVERS


@dataclass(frozen=True)
class RunConfig:
    """Everything a federated run needs to agree on. Keys are kebab-case in TOML."""

    num_server_rounds: int = 10  # federated rounds
    head: str = "none"  # private part on a public encoder (HEADS); none = train ``model`` end to end
    encoder: str = ""  # SHA-256 of the public encoder (filled from the encoder file by the runner / server)
    dp_stats_solver: str = "cosine"  # dp-stats: what the server solves from the summed statistics (DP_STATS_SOLVERS)
    dp_stats_share: float = 0.5  # dp-stats+linear: share of target-epsilon the statistics release spends
    dp_stats_ridge: float = 1.0  # dp-stats with lda / ridge: regulariser of the noised covariance
    # the release gate's consortium minimum top-1 (common.release_gate: why 0.80); below it a release is unfit
    release_min_accuracy: float = 0.80
    model: str = "cnn"  # model registry name (common.models.MODELS), with head = none
    image_size: int = 64  # model input side, pixels (must match preprocessing)
    local_epochs: int = 1  # passes over the site's training split per round
    batch_size: int = 32  # expected batch size (Poisson-sampled under DP)
    optimizer: str = "adam"  # local optimizer: adam (measured: learns the catalog far faster) | sgd
    learning_rate: float = 0.002  # local learning rate
    momentum: float = 0.9  # SGD momentum (optimizer = sgd)
    weight_decay: float = 0.0  # local weight decay
    strategy: str = "fedavg"  # aggregation strategy
    proximal_mu: float = 0.01  # FedProx proximal term (strategy = fedprox)
    server_learning_rate: float = 0.1  # FedAdam eta (strategy = fedadam)
    trimmed_beta: float = 0.2  # fraction cut at each end (strategy = fedtrimmedavg)
    fraction_fit: float = 1.0  # fraction of connected sites sampled to train per round
    fraction_evaluate: float = 1.0  # fraction of sites sampled to evaluate per round
    min_fit_sites: int = 2  # train a round only once this many sites are sampled
    min_available_sites: int = 2  # wait for this many connected sites before a round
    round_timeout_s: float = 600.0  # a round proceeds without sites that have not replied by then
    max_update_norm: float = 1e4  # replies whose update (new - global) L2 norm exceeds this are dropped
    dp: bool = True  # sample-level DP-SGD at every site (Opacus)
    noise_multiplier: float = 0.8  # DP-SGD noise multiplier (ignored when target-epsilon > 0)
    target_epsilon: float = 0.0  # > 0: plan the noise multiplier to reach this epsilon after all rounds
    max_grad_norm: float = 1.5  # DP-SGD per-sample clipping norm
    delta: float = 1e-5  # DP delta
    accountant: str = "rdp"  # privacy accountant: rdp | prv
    # DP noise and Poisson batches seeded from seed, round and site (simulations only): then the noise protects
    # nothing against whoever knows the run config, and a deployed site's policy refuses the run
    reproducible_noise: bool = False
    local_loss: str = "ce"  # local loss: ce | fedrs | logit-adjust | class-balanced (label-skew methods)
    fedrs_alpha: float = 0.5  # FedRS: scale of logits of classes absent at the site (1 = plain CE)
    logit_adjust_tau: float = 1.0  # logit adjustment strength (local-loss = logit-adjust)
    seed: int = 0  # seed for model init and site sampling
    val_fraction: float = 0.2  # fraction of each site's data held out for local validation
    # Opacus per-sample-gradient mode: auto = the fastest valid mode measured for the model
    # (common.models.DP_GRAD_SAMPLE_MODE, benchmarks.dp_overhead), else hooks | ew | functorch | ghost
    grad_sample_mode: str = "auto"
    update_compression: str = "none"  # site update on the wire: none | fp16 | int8 (common.compression)
    client_dp: str = "none"  # client-level DP: none | fixed-server | fixed-client | adaptive-server | adaptive-client
    client_dp_noise: float = 1.0  # noise multiplier of the Gaussian added to the aggregate (x clip / sampled sites)
    client_dp_clip: float = 1.0  # L2 bound of one site's update (initial bound when adaptive)
    client_dp_sampled_sites: int = 0  # sites the noise is calibrated for; 0 = min-fit-sites
    client_dp_target_quantile: float = 0.5  # adaptive: fraction of updates left unclipped the bound aims at
    client_dp_clip_lr: float = 0.2  # adaptive: learning rate of the clipping bound
    client_dp_count_stddev: float = 0.0  # adaptive: noise on the clipped-update count; 0 = sampled sites / 20
    # SecAgg+ (server.secure_agg): the server learns only the example-weighted mean update of a round's sites
    secure_aggregation: bool = False
    secagg_num_shares: float = 1.0  # fraction of the sampled sites each site shares masks with (Flower rounds up to odd)
    secagg_reconstruction_threshold: float = 0.6  # fraction of those shares needed to unmask (>= 2 sites)
    secagg_clipping_range: float = 1.0  # each value of (update x examples / max-weight) is clipped to +-this
    secagg_quantization_range: int = 2**24  # quantisation levels over the clipping range (x sites < 2^32)
    secagg_max_weight: int = 10_000  # largest number of training examples a site may weigh its update with

    def __post_init__(self) -> None:
        limits = {
            "num_server_rounds": (1, 10_000),
            "image_size": (16, 1024),
            "local_epochs": (1, 1000),
            "batch_size": (1, 65_536),
            "learning_rate": (1e-7, 10.0),
            "momentum": (0.0, 0.999),
            "weight_decay": (0.0, 1.0),
            "proximal_mu": (0.0, 100.0),
            "server_learning_rate": (1e-6, 10.0),
            "trimmed_beta": (0.0, 0.49),
            "fraction_fit": (1e-6, 1.0),
            "fraction_evaluate": (0.0, 1.0),
            "min_fit_sites": (1, 100_000),
            "min_available_sites": (1, 100_000),
            "round_timeout_s": (1.0, 7 * 24 * 3600.0),
            "max_update_norm": (1e-6, 1e12),
            "noise_multiplier": (0.0, 100.0),
            "target_epsilon": (0.0, 1e4),
            "max_grad_norm": (1e-6, 1e6),
            "delta": (0.0, 0.1),
            "seed": (0, 2**31 - 1),
            "fedrs_alpha": (0.0, 1.0),
            "logit_adjust_tau": (0.0, 10.0),
            "val_fraction": (0.0, 0.9),
            "client_dp_noise": (0.0, 100.0),
            "client_dp_clip": (1e-6, 1e6),
            "client_dp_sampled_sites": (0, 100_000),
            "client_dp_target_quantile": (0.0, 1.0),
            "client_dp_clip_lr": (1e-6, 10.0),
            "client_dp_count_stddev": (0.0, 1e6),
            "secagg_num_shares": (1e-6, 1.0),
            "secagg_reconstruction_threshold": (1e-6, 1.0),
            "secagg_clipping_range": (1e-6, 1e6),
            "secagg_quantization_range": (2**8, 2**26),  # sites x range must stay below the 2^32 modulus
            "secagg_max_weight": (1, 10**9),
            "dp_stats_share": (0.01, 0.99),
            "dp_stats_ridge": (0.0, 1e6),
            "release_min_accuracy": (0.0, 1.0),
        }
        choices = {"strategy": STRATEGIES, "accountant": ACCOUNTANTS, "local_loss": LOSSES, "optimizer": OPTIMIZERS,
                   "grad_sample_mode": GRAD_SAMPLE_MODES, "update_compression": COMPRESSIONS,
                   "head": HEADS, "dp_stats_solver": DP_STATS_SOLVERS}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"{_kebab(name)} = {value!r} is out of range [{lo}, {hi}]")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{_kebab(name)} = {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.min_fit_sites > self.min_available_sites:
            raise ConfigError("min-fit-sites cannot exceed min-available-sites")
        if self.dp and self.delta <= 0:
            raise ConfigError("delta must be > 0 when dp is on")
        if self.dp and self.grad_sample_mode == "ghost" and (self.local_loss != "ce" or self.proximal_mu > 0):
            raise ConfigError("grad-sample-mode = ghost needs local-loss = ce and proximal-mu = 0 "
                              "(ghost clipping cannot clip other losses or the proximal term)")
        self._check_client_dp()
        if self.secure_aggregation:
            self._check_secure_aggregation()
        self._check_head()

    @property
    def uses_encoder(self) -> bool:
        """Whether the run trains a private part on a public encoder (head != none)."""
        return self.head != "none"

    def stats_round(self, server_round: int) -> bool:
        """Whether ``server_round`` releases DP statistics rather than training weights."""
        return self.head in STATS_HEADS and server_round == 1

    def _check_head(self) -> None:
        if self.encoder and (len(self.encoder) != 64 or any(c not in "0123456789abcdef" for c in self.encoder)):
            raise ConfigError("encoder must be the 64-character hex SHA-256 of the public encoder file")
        if self.head not in STATS_HEADS:
            return
        if self.head == "dp-stats" and self.num_server_rounds != 1:
            raise ConfigError("head = dp-stats releases its statistics once: num-server-rounds must be 1 "
                              "(head = dp-stats+linear continues with DP-SGD rounds)")
        if self.head == "dp-stats+linear" and self.num_server_rounds < 2:
            raise ConfigError("head = dp-stats+linear needs num-server-rounds >= 2 (round 1 releases the statistics)")
        if self.secure_aggregation or self.client_dp != "none" or self.update_compression != "none":
            raise ConfigError("a dp-stats release is a sum of already-noised statistics: it takes no "
                              "secure-aggregation, client-dp or update-compression")

    @property
    def client_dp_sites(self) -> int:
        """Sites per round the client-level DP noise is calibrated for."""
        return self.client_dp_sampled_sites or self.min_fit_sites

    def _check_client_dp(self) -> None:
        if self.client_dp not in CLIENT_DP:
            raise ConfigError(f"client-dp = {self.client_dp!r}; choose one of {', '.join(CLIENT_DP)}")
        if self.client_dp == "none":
            return
        if self.strategy not in CLIENT_DP_STRATEGIES:
            raise ConfigError(f"client-dp needs a strategy that averages updates ({', '.join(CLIENT_DP_STRATEGIES)}); "
                              f"its noise is calibrated to a mean, not to {self.strategy}")
        if self.client_dp.endswith("-client") and self.update_compression != "none":
            raise ConfigError("client-dp with site-side clipping needs update-compression = none "
                              "(Flower's clipping mod clips the weights a site sends, not a compressed update)")
        if self.client_dp.startswith("adaptive") and self.client_dp_noise > 0:
            count_stddev = self.client_dp_count_stddev or self.client_dp_sites / 20
            if self.client_dp_noise >= 2 * count_stddev:
                raise ConfigError(
                    f"adaptive client-dp: client-dp-noise = {self.client_dp_noise:g} must be below twice the "
                    f"count noise ({count_stddev:g}); raise client-dp-count-stddev (Andrew et al. 2019)"
                )

    def _check_secure_aggregation(self) -> None:
        """SecAgg+ hides every single update: only options that need nothing but their mean are allowed."""
        if self.strategy not in SECAGG_STRATEGIES:
            raise ConfigError(f"secure-aggregation needs a strategy that only averages updates "
                              f"({', '.join(SECAGG_STRATEGIES)}); {self.strategy} needs each site's update")
        if self.update_compression != "none":
            raise ConfigError("secure-aggregation quantises the updates itself; set update-compression = none")
        if self.client_dp not in ("none", "fixed-client"):
            raise ConfigError("secure-aggregation works with client-dp = fixed-client only (the sites clip, the "
                              "server adds the noise to the mean): server-side or adaptive clipping needs each "
                              "site's update, which SecAgg+ hides from the server")
        if self.min_fit_sites < 2:
            raise ConfigError("secure-aggregation needs min-fit-sites >= 2 (a mean of one update is that update)")

    # ------------------------------------------------------------------ conversion
    @classmethod
    def keys(cls) -> list[str]:
        return [_kebab(f.name) for f in fields(cls) if f.init]

    @classmethod
    def from_flower(cls, values: Mapping[str, Any], *, ignore: tuple[str, ...] = ()) -> RunConfig:
        """Parse a kebab-case mapping (Flower run config); reject unknown keys and bad types."""
        types = {f.name: f.type for f in fields(cls) if f.init}
        kwargs: dict[str, Any] = {}
        unknown = []
        for key, value in values.items():
            if key in ignore:
                continue
            name = key.replace("-", "_")
            if name not in types:
                unknown.append(key)
                continue
            kwargs[name] = _coerce(key, value, types[name])
        if unknown:
            raise ConfigError(
                f"unknown run config key(s): {', '.join(sorted(unknown))}; known keys: {', '.join(cls.keys())}"
            )
        return cls(**kwargs)

    def to_flower(self) -> dict[str, bool | int | float | str]:
        return {_kebab(f.name): getattr(self, f.name) for f in fields(self) if f.init}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, typ: Any) -> Any:
    type_name = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(as_float)
    if type_name == "float":
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if type_name == "str":
        return str(value)
    raise ConfigError(f"{key}: unsupported type {type_name}")
