"""Public-encoder features of a site's images, cached so the encoder runs once per file.

Layout of ``cache_dir``::

    features-<encoder sha256[:16]>-<preprocessing key>.npz
        keys: (M,) str    salted file id and file stamp (size, mtime) of each row
        f:    (M, d) float32 the encoder's unit-norm features

The key names the encoder by its hash and the images by their preprocessing parameters, so
a feature is reused only for the same encoder on the same preprocessed image of an
unchanged file. Later rounds and runs encode nothing when no file changed; a changed or
new file is encoded alone. Like the image cache, the file holds no path and no patient
value.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.data.cache import cache_key
from common.preprocess_params import PreprocessParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteFeatures:
    """Features aligned with a :class:`client.data.site_data.SiteData`'s rows."""

    f: np.ndarray  # (N, d) float32, unit L2 norm
    encoded: int  # images this call ran the encoder on (0 when everything came from the cache)


def features_path(cache_dir: Path, encoder_sha256: str, params: PreprocessParams) -> Path:
    return Path(cache_dir) / f"features-{encoder_sha256[:16]}-{cache_key(params)}.npz"


def site_features(data, encoder, *, params: PreprocessParams, cache_dir: Path | None,  # noqa: ANN001
                  device=None) -> SiteFeatures:  # noqa: ANN001
    """Features of every accepted image of ``data`` (a ``SiteData``) with ``encoder`` (a ``FrozenEncoder``).

    ``encoder.sha256`` must be set (it is, for an encoder loaded from its file).
    """
    if not encoder.sha256:
        raise ValueError("the encoder has no hash: load it from its file")
    keys = list(data.keys)
    if len(keys) != len(data.x):
        raise ValueError("site data without row keys")
    old: dict[str, np.ndarray] = {}
    path = features_path(cache_dir, encoder.sha256, params) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as npz:
                stored_keys, stored = npz["keys"], npz["f"]
            if stored.ndim == 2 and stored.shape[1] == encoder.dim:
                old = {str(k): stored[i] for i, k in enumerate(stored_keys)}
        except (OSError, ValueError, KeyError) as e:
            logger.warning("feature cache unreadable (%s); it will be rebuilt", type(e).__name__)
    todo = [i for i, k in enumerate(keys) if k not in old]
    f = np.zeros((len(keys), encoder.dim), np.float32)
    for i, k in enumerate(keys):
        if k in old:
            f[i] = old[k]
    if todo:
        f[todo] = encoder.encode(data.x[todo], device=device)
    if path is not None and (todo or set(old) != set(keys)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.asarray(keys, dtype=str), f=f)
        os.replace(tmp, path)
    if todo:
        logger.info("encoded %d image(s), %d from the feature cache", len(todo), len(keys) - len(todo))
    return SiteFeatures(f, len(todo))
