"""``implantfl-sim pretrain``: a public encoder from public data only, written with its card.

Steps: get the public images (render random designs disjoint from the catalog, render the
manufacturers' CAD meshes with an X-ray simulator, or open a public set as downloaded), preprocess them with the site pipeline (cached), build the
encoder (train the ``implant-cnn`` backbone, or take a backbone that needs no training or
ships its weights), fit the public projection on the public features, and write
``encoder.pt`` + ``encoder.json``. No consortium image is read at any step.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from common.encoders import BackboneConfig, EncoderCard, FrozenEncoder, save_encoder
from common.encoders.frozen import fit_projection
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams

logger = logging.getLogger(__name__)

PUBLIC_SET_VERSION = 1  # bump when the public-set renderer changes its images
SOURCES = ("generated", "meshes", "folder", "csv", "kaggle-hip", "mura")


@dataclass(frozen=True)
class PretrainOptions:
    out: Path  # where encoder.pt and encoder.json go
    source: str = "generated"  # generated | meshes:DIR | folder:PATH | csv:PATH | kaggle-hip:PATH | mura:PATH
    arch: str = "implant-cnn"  # common.encoders.ARCHS
    weights: Path | None = None  # resnet*/densenet*: a state dict the site already has (ImageNet, RadImageNet)
    seed: int = 0
    designs: int = 300  # generated: public designs
    images_per_design: int | None = None  # generated (default 16) and meshes (default 60): radiographs per design
    epochs: int = 15  # implant-cnn: training passes
    image_size: int = 64  # must equal the run's image-size
    dim: int = 128  # implant-cnn: embedding width
    projection_dim: int = 16  # features after the public discriminant projection
    progress: bool = True
    cache_root: Path | None = None  # rendered/preprocessed public images (default: ~/.cache/implantfl)

    def __post_init__(self) -> None:
        kind = self.source.split(":", 1)[0]
        if kind not in SOURCES:
            raise ConfigError(f"--source must be generated or KIND:PATH with KIND one of {', '.join(SOURCES[1:])}")
        if kind != "generated" and ":" not in self.source:
            raise ConfigError(f"--source {kind} needs a path: {kind}:PATH")
        for name in ("designs", "images_per_design", "epochs", "projection_dim", "dim"):
            if getattr(self, name) is not None and getattr(self, name) < (0 if name == "designs" and kind == "meshes"
                                                                          else 1):
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        if self.arch in ("resnet18", "resnet50", "densenet121") and self.weights is None:
            raise ConfigError(f"--arch {self.arch} needs --weights (a state dict file the consortium has)")


    @property
    def per_design(self) -> int:
        """Radiographs per design: as given, else 16 (generated) or 60 (meshes: few designs, more views each)."""
        if self.images_per_design is not None:
            return self.images_per_design
        return MESH_IMAGES_PER_DESIGN if self.source.startswith("meshes:") else 16


MESH_IMAGES_PER_DESIGN = 60


@dataclass
class PublicImages:
    x: np.ndarray  # (N, 1, S, S) preprocessed
    y: np.ndarray  # (N,) public class index
    parameters: np.ndarray | None  # (classes, P) design parameters, when the source knows them
    source: dict  # what the card records about the source
    excludes: str
    timing: dict[str, float]


def _cache_root(opts: PretrainOptions) -> Path:
    from simulations.federation import default_cache_root

    return opts.cache_root or default_cache_root()


@contextmanager
def _bar(label: str, total: int, show: bool) -> Iterator[Callable[[], None]]:
    if not show:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as prog:
        task = prog.add_task(label, total=total)
        yield lambda: prog.advance(task)


def generated_images(opts: PretrainOptions, params: PreprocessParams) -> PublicImages:
    """Render random designs disjoint from the catalog (cached), and preprocess them with the site pipeline."""
    from client.data.site_data import load_site
    from common.catalog import Catalog
    from simulations.pretrain.designs import MIN_DISTANCE, nearest_excluded, random_designs
    from simulations.pretrain.public_set import read_design_parameters, write_public_set

    timing: dict[str, float] = {}
    designs = random_designs(opts.designs, seed=opts.seed)
    key = f"generated-v{PUBLIC_SET_VERSION}-s{opts.seed}-{opts.designs}x{opts.per_design}"
    folder = _cache_root(opts) / "public" / key
    t0 = time.monotonic()
    if not (folder / "public_set.json").exists():
        tmp = folder.with_name(folder.name + ".partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        with _bar("rendering public designs", opts.designs * opts.per_design, opts.progress) as advance:
            write_public_set(tmp, designs, images_per_design=opts.per_design, seed=opts.seed, advance=advance)
        tmp.rename(folder)
    timing["render_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    catalog = Catalog.load(folder / "catalog.json")
    data = load_site(folder, catalog=catalog, params=params, cache_dir=folder / "cache", val_fraction=0.0,
                     progress=opts.progress)
    timing["preprocess_s"] = round(time.monotonic() - t0, 1)
    table = read_design_parameters(folder)
    parameters = np.stack([table[c.id] for c in catalog])
    closest = min(nearest_excluded(d)[1] for d in designs)
    source = {"kind": "generated", "designs": len(designs), "images_per_design": opts.per_design,
              "images": int(len(data.y)), "rejected_by_qc": int(sum(data.report.rejected.values())), "seed": opts.seed,
              "min_distance_to_catalog": MIN_DISTANCE, "closest_design_distance": round(float(closest), 3)}
    excludes = (f"every design of the synthetic consortium catalog: each public design is at least {MIN_DISTANCE} "
                f"(normalised design-parameter distance; the closest is {closest:.2f}) from every catalog design")
    return PublicImages(data.x, data.y, parameters, source, excludes, timing)


def mesh_images(opts: PretrainOptions, params: PreprocessParams) -> PublicImages:
    """Render every mesh of ``meshes:DIR`` with gVirtualXray (cached by the meshes' hashes) and preprocess."""
    import shutil

    from client.data.site_data import load_site
    from common.catalog import Catalog
    from simulations.xray.mesh_folder import folder_key, read_mesh_folder
    from simulations.xray.render_sets import RENDER_VERSION, renderer_version, write_mesh_set
    from simulations.xray.runtime import check_available

    designs = read_mesh_folder(Path(opts.source.split(":", 1)[1]).expanduser())
    timing: dict[str, float] = {}
    key = f"meshes-v{RENDER_VERSION}-{folder_key(designs)}-s{opts.seed}-{opts.per_design}"
    folder = _cache_root(opts) / "public" / key
    t0 = time.monotonic()
    if not (folder / "render_set.json").exists():
        check_available()
        tmp = folder.with_name(folder.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        with _bar("rendering the meshes (gVirtualXray)", len(designs) * opts.per_design, opts.progress) as advance:
            write_mesh_set(tmp, designs, images_per_design=opts.per_design, seed=opts.seed, advance=advance)
        tmp.rename(folder)
    timing["render_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    data = load_site(folder, catalog=Catalog.load(folder / "catalog.json"), params=params, cache_dir=folder / "cache",
                     val_fraction=0.0, progress=opts.progress)
    timing["preprocess_s"] = round(time.monotonic() - t0, 1)
    source = {"kind": "meshes", "designs": len(designs), "images_per_design": opts.per_design,
              "images": int(len(data.y)), "rejected_by_qc": int(sum(data.report.rejected.values())), "seed": opts.seed,
              "renderer": renderer_version(),
              "meshes": [d.record() for d in designs]}
    excludes = ("every consortium patient image: renders of the meshes (manufacturers' CAD) only; the designs "
                "are the catalog's own, so the encoder knows their shapes, not any site's radiographs")
    return PublicImages(data.x, data.y, None, source, excludes, timing)


def with_generated(opts: PretrainOptions, params: PreprocessParams) -> PublicImages:
    """The meshes' renders together with the generated public designs (``--designs``; 0: the meshes alone).

    The meshes teach the encoder the catalog's own shapes as a physical simulator shows them;
    the many generated designs, whose parameters are known, teach it what sets designs apart
    in general (on 14 meshes alone the encoder learns the designs' ids only, and its features
    carry less to new radiographs: see the README's CAD section).
    """
    meshes = mesh_images(opts, params)
    if opts.designs == 0:
        return meshes
    generated = generated_images(replace(opts, source="generated", images_per_design=None), params)
    n = int(generated.y.max()) + 1
    rows = np.full((int(meshes.y.max()) + 1, generated.parameters.shape[1]), np.nan, np.float32)
    source = {**meshes.source, "generated": generated.source}
    timing = {k: round(meshes.timing.get(k, 0.0) + generated.timing.get(k, 0.0), 1)
              for k in {*meshes.timing, *generated.timing}}
    return PublicImages(np.concatenate([generated.x, meshes.x]), np.concatenate([generated.y, meshes.y + n]),
                        np.concatenate([generated.parameters, rows]), source,
                        f"{meshes.excludes}; and {generated.excludes}", timing)


def dataset_images(opts: PretrainOptions, params: PreprocessParams) -> PublicImages:
    """A public set as downloaded (folder:, csv:, kaggle-hip:, mura:), linked and preprocessed (cached)."""
    from client.data.site_data import load_site
    from simulations.datasets import open_dataset
    from simulations.datasets.materialize import materialize

    t0 = time.monotonic()
    index = open_dataset(opts.source)
    key = hashlib.sha256(opts.source.encode()).hexdigest()[:12]
    folder = _cache_root(opts) / "public" / f"dataset-{key}"
    materialize(index, folder, {"public": list(range(len(index)))}, [], spec=f"pretrain {opts.source.split(':')[0]}",
                overwrite=True)
    data = load_site(folder / "sites" / "public", catalog=index.catalog, params=params, cache_dir=folder / "cache",
                     val_fraction=0.0, progress=opts.progress)
    kind = opts.source.split(":", 1)[0]
    source = {"kind": kind, "classes": len(index.catalog), "images": int(len(data.y)),
              "rejected_by_qc": int(sum(data.report.rejected.values()))}
    excludes = "whatever the public set does not hold; check that no consortium site's images are in it"
    return PublicImages(data.x, data.y, None, source, excludes, {"preprocess_s": round(time.monotonic() - t0, 1)})


def pretrain(opts: PretrainOptions) -> EncoderCard:
    """Build, fit and write a public encoder; returns its card (with the SHA-256)."""
    from common.device import pick_device
    from simulations.pretrain.training import PretrainSettings, pretrain_encoder

    t_start = time.monotonic()
    params = PreprocessParams(image_size=opts.image_size)
    kind = opts.source.split(":", 1)[0]
    public = (generated_images(opts, params) if kind == "generated" else with_generated(opts, params) if kind == "meshes"
              else dataset_images(opts, params))
    if len(public.y) < 2 or len(np.unique(public.y)) < 2:
        raise ConfigError("the public source gave fewer than two usable images of two classes")
    config = BackboneConfig(arch=opts.arch, image_size=opts.image_size, dim=opts.dim)
    training: dict = {"objective": "none (the backbone is used as it is)"}
    t0 = time.monotonic()
    if opts.arch == "implant-cnn":
        settings = PretrainSettings(epochs=opts.epochs, seed=opts.seed)
        with _bar("pretraining the encoder (epochs)", opts.epochs, opts.progress) as advance:
            encoder, training = pretrain_encoder(public.x, public.y, public.parameters, config, settings,
                                                 device=pick_device(), on_epoch=lambda _e, _l: advance())
    else:
        encoder = FrozenEncoder(config)
        if opts.weights is not None:
            _load_backbone_weights(encoder, opts.weights)
            training["weights_sha256"] = hashlib.sha256(Path(opts.weights).read_bytes()).hexdigest()
    public.timing["train_s"] = round(time.monotonic() - t0, 1)
    raw = encoder.encode(public.x, raw=True, device=pick_device())
    dim = opts.projection_dim
    if kind == "meshes" and opts.designs == 0:  # a few catalog designs alone: every discriminant direction they have
        dim = min(dim, max(1, len(np.unique(public.y)) - 1))
    mean, projection, described = fit_projection(raw, public.y, dim=dim)
    encoder.set_projection(mean, projection)
    public.timing["total_s"] = round(time.monotonic() - t_start, 1)
    card = EncoderCard(
        arch=opts.arch, dim=encoder.dim, sha256="", source=public.source, excludes=public.excludes,
        preprocess=asdict(params), config=config.to_dict(), projection=described, training=training,
        timing=public.timing, created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return save_encoder(encoder, opts.out, card)


def _load_backbone_weights(encoder: FrozenEncoder, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = encoder.backbone.branch.load_state_dict(state, strict=False)
    except (OSError, RuntimeError, ValueError, AttributeError) as e:
        raise ConfigError(f"--weights cannot be loaded into {encoder.config.arch} ({type(e).__name__})") from e
    if missing:
        raise ConfigError(f"--weights lack {len(missing)} of the {encoder.config.arch} backbone's tensors")
    logger.info("loaded backbone weights (%d classifier tensors ignored)", len(unexpected))


DEFAULT_VERSION = 2  # bump when the default encoder's recipe changes (a new cache entry)


def ensure_default_encoder(*, image_size: int, progress: bool, cache_root: Path | None = None) -> Path:
    """The default public encoder for ``image_size`` (generated source, seed 0): pretrained once, then cached."""
    from simulations.federation import default_cache_root

    root = (cache_root or default_cache_root()) / "encoders" / f"generated-v{DEFAULT_VERSION}-{image_size}px"
    if (root / "encoder.json").exists() and (root / "encoder.pt").exists():
        return root
    opts = PretrainOptions(out=root.with_name(root.name + ".partial"), image_size=image_size, progress=progress,
                           cache_root=cache_root)
    card = pretrain(opts)
    logger.info("pretrained the default encoder %s in %.0f s", card.sha256[:12], card.timing.get("total_s", 0))
    opts.out.rename(root)
    return root


def describe(card: EncoderCard) -> str:
    """One line for a terminal."""
    t = card.timing
    return (f"encoder {card.sha256[:12]} ({card.arch}, {card.dim}-d, source {card.source.get('kind')}; "
            f"{t.get('total_s', 0):.0f} s: render {t.get('render_s', 0):.0f}, preprocess "
            f"{t.get('preprocess_s', 0):.0f}, train {t.get('train_s', 0):.0f})")

