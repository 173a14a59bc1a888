"""A release from a checkpoint folder (``implantfl-server export``).

``export_release`` reads the last checkpoint (weights + per-round history), checks the
catalog against the one the run was trained with, and writes a release whose model card
holds the rounds, sites and privacy spent recorded in the checkpoint. Only weights and
JSON are read: no images. The ONNX export itself is :mod:`server.onnx_export`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.calibration import Calibration
from common.catalog import Catalog
from common.config import RunConfig
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams
from server.deploy_report import federated_final
from server.guarantees import guarantees
from server.release import write_release

logger = logging.getLogger(__name__)


def export_release(
    checkpoint_dir: Path,
    out: Path,
    catalog: Catalog,
    preprocess: PreprocessParams | None = None,
    config: RunConfig | None = None,
    *,
    calibration: Calibration | None = None,
    onnx: bool = True,
    encoder_dir: Path | None = None,
) -> Path:
    """Write a release from the last checkpoint in ``checkpoint_dir``.

    A run with a head needs its public encoder (``encoder_dir``; checked against the hash the
    run recorded).

    ``config`` defaults to the run config stored in the checkpoint and ``preprocess`` to the
    default parameters at the run's image size. Raises ``ConfigError`` when the folder holds
    no checkpoint or the catalog is not the run's.
    """
    from server.checkpoint import load_checkpoint
    from server.status import privacy_by_site, read_state, summarize

    ckpt = load_checkpoint(Path(checkpoint_dir))
    state = read_state(Path(checkpoint_dir))
    if ckpt is None or state is None:
        raise ConfigError("the checkpoint folder holds no checkpoint (no round has finished)")
    trained_on = ckpt.meta.get("catalog-fingerprint")
    if trained_on and catalog.fingerprint() != trained_on:
        raise ConfigError("this catalog is not the one the run was trained with")
    cfg = config or RunConfig.from_flower(ckpt.meta["config"])
    params = preprocess or PreprocessParams(image_size=cfg.image_size)
    if params.image_size != cfg.image_size:
        raise ConfigError("the preprocessing image size differs from the run's image-size")
    summary = summarize(state)
    card = {
        "rounds": ckpt.history.to_list(),
        "privacy": privacy_by_site(state),
        "sites": {name: {"train": s.get("train-examples", ""), "val": s.get("val-examples", "")}
                  for name, s in summary["sites"].items()},
        "rounds_done": ckpt.round,
        "final": federated_final(ckpt.history.to_list()),
    }
    card.update(guarantees(cfg, card["rounds"], num_sites=len(card["sites"])))
    written = write_release(Path(out), arrays=ckpt.arrays, config=cfg, catalog=catalog, preprocess=params,
                            summary=card, calibration=calibration, onnx=onnx, encoder_dir=encoder_dir)
    record_release(Path(checkpoint_dir), written, ckpt.round)
    return written


RELEASES = "releases.json"  # in a checkpoint folder: the releases exported from it (server-side only)


def record_release(checkpoint_dir: Path, release: Path, rnd: int) -> None:
    """Tie a release and its run together: the release names the run (its checkpoint folder's name and
    round, no server path), and the checkpoint folder lists its releases (for the operator's page)."""
    import json
    from datetime import UTC, datetime

    info_path = release / "model.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["run"] = {"checkpoint": Path(checkpoint_dir).resolve().name, "round": int(rnd)}
    info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    index = Path(checkpoint_dir) / RELEASES
    try:
        entries = list(json.loads(index.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        entries = []
    entries = [e for e in entries if e.get("path") != str(release.resolve())]
    entries.append({"path": str(release.resolve()), "round": int(rnd),
                    "created": datetime.now(UTC).isoformat(timespec="seconds")})
    index.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
