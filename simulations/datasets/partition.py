"""Partitioners: split one labelled pool into simulated sites, reproducibly.

Every partitioner takes the examples' class indices (and optionally a group key per
example, e.g. the patient, so that a patient's images never straddle two sites), a seed,
and returns a :class:`Partition`: site -> sorted example indices, a kind and an
acquisition-style tag per site. ``Partition.table`` renders the site x class counts as a
rich table; ``mean_class_entropy`` measures label skew (0 = every site holds one class).

Specs, as given to ``--partition``::

    iid:sites=4
    dirichlet:sites=4,alpha=0.3          hospitals with Dirichlet(alpha) label skew
    quantity:sites=4,beta=0.5            IID labels, Dirichlet(beta) site sizes
    manufacturer                         one site per manufacturer, own classes only
    manufacturer:hospitals=3,share=0.5,alpha=0.5
                                         + hospitals holding (1 - share) of every class
    site                                 the dataset's own site column
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.errors import ConfigError
from simulations.datasets.index import label_id

# Acquisition-style tags for hospital sites: the synthetic generator maps each to a
# scanner/exposure profile; for real data they only label the table.
ACQUISITION_STYLES = ("standard", "high-contrast", "low-dose-noise", "overexposed", "underexposed", "soft-focus")


@dataclass(frozen=True)
class Partition:
    sites: dict[str, np.ndarray]  # site name -> sorted indices into the partitioned examples
    kinds: dict[str, str] = field(default_factory=dict)  # site -> "hospital" | "manufacturer" | "site"
    styles: dict[str, str] = field(default_factory=dict)  # site -> acquisition style tag ("" = none)
    spec: str = ""  # the spec that made it

    def counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Site x class example counts, rows in ``sites`` order."""
        y = np.asarray(labels)
        return np.stack([np.bincount(y[idx], minlength=num_classes) for idx in self.sites.values()])

    def table(self, labels: np.ndarray, class_names: Sequence[str], *, title: str | None = None):  # noqa: ANN201
        """A ``rich.table.Table`` of site x class counts with site kind, style and size."""
        from rich.table import Table

        counts = self.counts(labels, len(class_names))
        entropy = mean_class_entropy(counts)
        table = Table(title=title or f"partition {self.spec or ''}".strip(),
                      caption=f"mean per-site class entropy {entropy:.2f} bits", show_footer=True)
        table.add_column("site", footer="total")
        table.add_column("kind")
        table.add_column("style")
        table.add_column("n", justify="right", footer=str(int(counts.sum())))
        for j, name in enumerate(class_names):
            table.add_column(name, justify="right", footer=str(int(counts[:, j].sum())))
        for (site, _), row in zip(self.sites.items(), counts, strict=True):
            table.add_row(site, self.kinds.get(site, ""), self.styles.get(site, ""), str(int(row.sum())),
                          *[str(int(c)) if c else "." for c in row])
        return table

    def show(self, labels: np.ndarray, class_names: Sequence[str], *, console=None) -> None:  # noqa: ANN001
        from rich.console import Console

        (console or Console()).print(self.table(labels, class_names))

    def to_dict(self) -> dict:
        return {"spec": self.spec, "sites": {s: {"kind": self.kinds.get(s, ""), "style": self.styles.get(s, ""),
                                                  "size": int(len(i))} for s, i in self.sites.items()}}


def mean_class_entropy(counts: np.ndarray) -> float:
    """Mean over sites of the entropy (bits) of the site's class distribution."""
    c = np.asarray(counts, dtype=np.float64)
    p = c / np.clip(c.sum(axis=1, keepdims=True), 1e-12, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    return float(h.mean())


# ---------------------------------------------------------------------------- groups
def _by_group(labels: np.ndarray, groups: Sequence | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-unit label (majority of its examples) and member indices; a unit = a group or one example."""
    y = np.asarray(labels, dtype=np.int64)
    if groups is None:
        return y, [np.array([i]) for i in range(len(y))]
    keys = np.asarray(groups, dtype=object)
    if len(keys) != len(y):
        raise ValueError("one group key per example")
    _, first, inverse = np.unique(keys.astype(str), return_index=True, return_inverse=True)
    order = np.argsort(first)  # units in first-seen order, independent of key spelling
    members = [np.flatnonzero(inverse == u) for u in order]
    return np.array([np.bincount(y[m]).argmax() for m in members], dtype=np.int64), members


def _expand(units: dict[str, list[int] | np.ndarray], members: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {s: np.sort(np.concatenate([members[u] for u in us])) if len(us) else np.zeros(0, np.int64)
            for s, us in units.items()}


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i + 1:02d}" for i in range(n)]


def _styles(names: Sequence[str], rng: np.random.Generator) -> dict[str, str]:
    order = rng.permutation(len(ACQUISITION_STYLES))
    return {s: ACQUISITION_STYLES[order[i % len(order)]] for i, s in enumerate(names)}


def _check_sites(sites: int, units: int) -> None:
    if sites < 1:
        raise ConfigError("a partition needs at least 1 site")
    if sites > units:
        raise ConfigError(f"cannot make {sites} sites from {units} examples/patients")


# ---------------------------------------------------------------------------- partitioners
def iid(labels: np.ndarray, *, sites: int, seed: int = 0, groups: Sequence | None = None) -> Partition:
    """Shuffle, then equal shares."""
    y, members = _by_group(labels, groups)
    _check_sites(sites, len(y))
    perm = np.random.default_rng(seed).permutation(len(y))
    names = _names("site", sites)
    units = {s: part for s, part in zip(names, np.array_split(perm, sites), strict=True)}
    return Partition(_expand(units, members), dict.fromkeys(names, "hospital"), {}, f"iid:sites={sites}")


def dirichlet(labels: np.ndarray, *, sites: int, alpha: float, seed: int = 0, groups: Sequence | None = None,
              min_size: int = 1, max_tries: int = 1000) -> Partition:
    """Hospitals with label skew: class k's examples split by proportions ~ Dir(alpha).

    Small ``alpha`` gives each site few classes; large ``alpha`` approaches IID. Draws are
    repeated until every site holds at least ``min_size`` units.
    """
    if alpha <= 0:
        raise ConfigError("dirichlet alpha must be > 0")
    y, members = _by_group(labels, groups)
    _check_sites(sites, len(y))
    rng = np.random.default_rng(seed)
    names = _names("hospital", sites)
    for _ in range(max_tries):
        units: list[list[int]] = [[] for _ in range(sites)]
        for k in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == k))
            cuts = (np.cumsum(rng.dirichlet(np.full(sites, alpha)))[:-1] * len(idx)).astype(int)
            for s, part in enumerate(np.split(idx, cuts)):
                units[s].extend(part.tolist())
        if min(len(u) for u in units) >= min_size:
            break
    else:
        raise ConfigError(f"no Dirichlet(alpha={alpha}) draw gave every site {min_size} example(s); "
                          "use fewer sites or a larger alpha")
    parts = dict(zip(names, units, strict=True))
    return Partition(_expand(parts, members), dict.fromkeys(names, "hospital"), _styles(names, rng),
                     f"dirichlet:sites={sites},alpha={alpha:g}")


def quantity_skew(labels: np.ndarray, *, sites: int, beta: float = 0.5, seed: int = 0,
                  groups: Sequence | None = None, min_size: int = 1) -> Partition:
    """IID labels, site sizes proportional to a Dirichlet(beta) draw (at least ``min_size`` each)."""
    if beta <= 0:
        raise ConfigError("quantity-skew beta must be > 0")
    y, members = _by_group(labels, groups)
    _check_sites(sites, len(y))
    if sites * min_size > len(y):
        raise ConfigError("not enough examples for the minimum site size")
    rng = np.random.default_rng(seed)
    spare = len(y) - sites * min_size
    sizes = min_size + np.floor(rng.dirichlet(np.full(sites, beta)) * spare).astype(int)
    sizes[np.argmax(sizes)] += len(y) - sizes.sum()  # rounding remainder to the largest site
    perm = rng.permutation(len(y))
    names = _names("site", sites)
    parts = dict(zip(names, np.split(perm, np.cumsum(sizes)[:-1]), strict=True))
    return Partition(_expand(parts, members), dict.fromkeys(names, "hospital"), _styles(names, rng),
                     f"quantity:sites={sites},beta={beta:g}")


def by_manufacturer(labels: np.ndarray, manufacturers: Sequence[str], *, seed: int = 0,
                    groups: Sequence | None = None, hospitals: int = 0, share: float = 1.0,
                    alpha: float = 0.5) -> Partition:
    """One site per manufacturer holding only its own classes (``manufacturers[k]`` makes class k).

    With ``hospitals > 0``, a fraction ``share`` of every class goes to its manufacturer and
    the rest to ``hospitals`` sites with Dirichlet(alpha) label skew.
    """
    if not 0.0 < share <= 1.0:
        raise ConfigError("manufacturer share must be in (0, 1]")
    if share < 1.0 and hospitals < 1:
        raise ConfigError("share < 1 needs hospitals >= 1 to hold the rest")
    y, members = _by_group(labels, groups)
    makers = sorted({manufacturers[k] for k in np.unique(y)})
    rng = np.random.default_rng(seed)
    maker_site = {m: f"mfr-{label_id(m)}" for m in makers}
    parts: dict[str, list[int]] = {maker_site[m]: [] for m in makers}
    rest: list[int] = []
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        cut = len(idx) if share >= 1.0 else int(round(share * len(idx)))
        parts[maker_site[manufacturers[k]]].extend(idx[:cut].tolist())
        rest.extend(idx[cut:].tolist())
    kinds = dict.fromkeys(parts, "manufacturer")
    styles: dict[str, str] = {}
    spec = "manufacturer" + (f":hospitals={hospitals},share={share:g},alpha={alpha:g}" if hospitals else "")
    if hospitals:
        rest_arr = np.array(sorted(rest), dtype=np.int64)
        hosp = dirichlet(y[rest_arr], sites=hospitals, alpha=alpha, seed=int(rng.integers(2**31)))
        for s, idx in hosp.sites.items():
            parts[s] = rest_arr[idx].tolist()
        kinds.update(hosp.kinds)
        styles.update(hosp.styles)
    return Partition(_expand(parts, members), kinds, styles, spec)


def by_site(site_of: Sequence[str | None]) -> Partition:
    """The dataset's own sites (a ``site`` column); every example must have one."""
    if any(s is None or s == "" for s in site_of):
        raise ConfigError("partition 'site' needs a site for every image (csv column site)")
    keys = np.asarray(site_of, dtype=object).astype(str)
    sites = {label_id(s): np.flatnonzero(keys == s) for s in sorted(set(keys))}
    return Partition(sites, dict.fromkeys(sites, "site"), {}, "site")


# ---------------------------------------------------------------------------- specs
_PARAMS: dict[str, dict[str, type]] = {
    "iid": {"sites": int},
    "dirichlet": {"sites": int, "alpha": float, "min_size": int},
    "quantity": {"sites": int, "beta": float, "min_size": int},
    "manufacturer": {"hospitals": int, "share": float, "alpha": float},
    "site": {},
}


def parse_spec(spec: str) -> tuple[str, dict[str, int | float]]:
    """``'dirichlet:sites=4,alpha=0.3'`` -> ``('dirichlet', {'sites': 4, 'alpha': 0.3})``."""
    name, _, rest = spec.strip().partition(":")
    if name not in _PARAMS:
        raise ConfigError(f"unknown partition {name!r}; choose one of {', '.join(_PARAMS)}")
    params: dict[str, int | float] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in _PARAMS[name]:
            known = ", ".join(_PARAMS[name]) or "none"
            raise ConfigError(f"partition {name}: bad parameter {item!r} (known: {known})")
        try:
            params[key] = _PARAMS[name][key](value.strip())
        except ValueError:
            raise ConfigError(f"partition {name}: {key} must be a {_PARAMS[name][key].__name__}") from None
    return name, params


def make_partition(spec: str, labels: np.ndarray, *, seed: int = 0, groups: Sequence | None = None,
                   manufacturers: Sequence[str] | None = None, site_of: Sequence[str | None] | None = None,
                   default_sites: int = 4) -> Partition:
    """Build a partition from a spec string (see the module docstring)."""
    name, params = parse_spec(spec)
    builders: Mapping[str, Callable[[], Partition]] = {
        "iid": lambda: iid(labels, seed=seed, groups=groups, **{"sites": default_sites, **params}),
        "dirichlet": lambda: dirichlet(labels, seed=seed, groups=groups, **{"sites": default_sites, "alpha": 0.5,
                                                                           **params}),
        "quantity": lambda: quantity_skew(labels, seed=seed, groups=groups, **{"sites": default_sites, **params}),
        "manufacturer": lambda: by_manufacturer(labels, _need(manufacturers, "manufacturer"), seed=seed,
                                                groups=groups, **params),
        "site": lambda: by_site(_need(site_of, "site")),
    }
    return builders[name]()


def _need(value, what: str):  # noqa: ANN001, ANN202
    if value is None:
        raise ConfigError(f"partition {what} needs a per-class manufacturer / per-image site from the dataset")
    return value
