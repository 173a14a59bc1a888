"""Update compression end to end without Ray: the real site task compresses, the real server loop rebuilds.

An integration test: real site tasks (ingest, training) and the real server round loop, in one process.

Sites run ``client.task.train`` on a small image folder; a fake Grid carries the messages
to ``server.loop.run_rounds`` (validation, FedAvg, history), as Flower's would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.compression import REPLY_KEY, compress_update
from common.config import RunConfig
from server.loop import LoopState, run_rounds
from server.strategy import build_strategy
from tests.conftest import reply_message

Node = Callable[[Message], RecordDict]
CFG = RunConfig(num_server_rounds=1, fraction_evaluate=0.0, min_fit_sites=1, min_available_sites=1, dp=False,
                batch_size=4, image_size=32, val_fraction=0.0, round_timeout_s=30.0, seed=3)


class FakeGrid:
    """``get_node_ids`` / ``send_and_receive`` over scripted nodes (what Flower's Grid does)."""

    def __init__(self, nodes: dict[int, Node]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [reply_message(self.nodes[m.metadata.dst_node_id](m), src_node_id=m.metadata.dst_node_id,
                              message_type=m.metadata.message_type) for m in messages]


@pytest.fixture(scope="module", autouse=True)
def task_identity():
    """Flower's Message() reads the running task's identity, which a real ServerApp process sets."""
    from flwr.supercore.task_identity import TaskIdentity

    with pytest.MonkeyPatch.context() as mp:
        for attr in ("_run_id", "_node_id", "_task_id"):
            mp.setattr(TaskIdentity, attr, 1 if attr != "_node_id" else 0)
        yield


@pytest.fixture(scope="module")
def site_files(tmp_path_factory) -> tuple[Path, Path, object]:
    """(site folder with 6 labelled radiographs of 2 classes, catalog.json path, catalog)."""
    from common.catalog import Catalog, ImplantClass
    from tests.unit.client.conftest import draw_radiograph, write_labels, write_png

    root = tmp_path_factory.mktemp("compression-site")
    site = root / "site"
    (site / "images").mkdir(parents=True)
    rows = []
    for k in range(6):
        name = f"images/img{k}.png"
        write_png(site / name, draw_radiograph(200 + k).image)
        rows.append((name, "stem-a" if k < 3 else "stem-b"))
    write_labels(site, rows)
    catalog = Catalog("test", "1", tuple(ImplantClass(f"stem-{k}", "Maker", f"Stem {k}") for k in "abc"))
    catalog.save(root / "catalog.json")
    return site, root / "catalog.json", catalog


def real_site(site_files, tmp_path: Path, name: str) -> Node:
    """A node running the real site task (``client.task.train``) on the shared image folder."""
    from client import task
    from client.site.config import SiteConfig
    from common.preprocess_params import PreprocessParams

    data_dir, catalog_path, _ = site_files
    runtime = SiteConfig(name=name, data_dir=data_dir, catalog_path=catalog_path, cache_dir=data_dir.parent / "cache",
                          state_dir=tmp_path / name, preprocess=PreprocessParams(image_size=32),
                          policy={"require-dp": False}, device="cpu")

    def node(msg: Message) -> RecordDict:
        arrays = next(iter(msg.content.array_records.values()))
        config = dict(next(iter(msg.content.config_records.values())))
        return task.train(runtime, arrays, config, run_id=1)

    return node


def _initial(cfg: RunConfig, catalog) -> ArrayRecord:  # noqa: ANN001
    from server.app import initial_arrays

    return initial_arrays(cfg, catalog)


def _round(grid: FakeGrid, cfg: RunConfig, catalog) -> tuple[LoopState, ArrayRecord]:  # noqa: ANN001
    start = _initial(cfg, catalog)
    state = LoopState(arrays=start)
    send = {**cfg.to_flower(), "catalog-fingerprint": catalog.fingerprint()}
    return run_rounds(grid, build_strategy(cfg), cfg, state, send_config=send), start


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float64) for k, v in record.items()}


@pytest.fixture(scope="module")
def uncompressed(site_files, tmp_path_factory):
    """The round without compression: (start weights, new global weights, bytes per update)."""
    tmp = tmp_path_factory.mktemp("none")
    grid = FakeGrid({1: real_site(site_files, tmp, "a"), 2: real_site(site_files, tmp, "b")})
    state, start = _round(grid, CFG, site_files[2])
    return _numpy(start), _numpy(state.arrays), state.history.rounds[0].aggregate["update-bytes"]


@pytest.mark.parametrize(("mode", "bytes_ratio"), [("fp16", 0.5), ("int8", 0.25)])
def test_a_compressed_round_through_the_real_task_and_loop_matches_the_plain_one(
    site_files, uncompressed, tmp_path, mode, bytes_ratio
):
    # Prepare: two sites with the same data and seed send the same update; a plain round for reference
    start, plain, plain_bytes = uncompressed
    grid = FakeGrid({1: real_site(site_files, tmp_path, "a"), 2: real_site(site_files, tmp_path, "b")})
    # Execute
    state, _ = _round(grid, CFG.replace(update_compression=mode), site_files[2])
    # Assert: both updates used, bytes recorded per site and per round, weights as plain within the codec's error
    [record] = state.history.rounds
    assert record.aggregate["sites-used"] == 2
    assert {s: e["status"] for s, e in record.sites.items()} == {"a": "ok", "b": "ok"}
    assert record.sites["a"]["update-bytes"] == record.aggregate["update-bytes"]
    assert record.aggregate["update-bytes"] / plain_bytes == pytest.approx(bytes_ratio, abs=0.02)
    new = _numpy(state.arrays)
    for key, ref in plain.items():
        delta = ref - start[key]
        if mode == "fp16":
            bound = 2.0**-11 * np.abs(delta) + 2.0**-24 + np.spacing(np.abs(ref).astype(np.float32))
        else:  # half an 8-bit step of this tensor's update
            bound = (delta.max() - delta.min()) / 255 / 2 + np.spacing(np.abs(ref).astype(np.float32))
        assert np.all(np.abs(new[key] - ref) <= bound), key
    assert any(not np.array_equal(plain[k], start[k]) for k in plain)  # training did move the weights


def _fake_reply(arrays: ArrayRecord, *, name: str, compression: str | None) -> RecordDict:
    """A train reply with the real task's metric keys (Flower aggregates only replies that agree)."""
    from client.task import TRAIN_METRICS

    site = ConfigRecord({"name": name, "status": "ok", "reason": ""})
    if compression is not None:
        site[REPLY_KEY] = compression
    metrics = MetricRecord({k: 5 if k == "num-examples" else 0.5 for k in TRAIN_METRICS})
    return RecordDict({"arrays": arrays, "metrics": metrics, "site": site})


def _moved(msg: Message, step: float = 1e-3) -> tuple[dict, dict]:
    """(received global, global + step) as arrays by name."""
    received = {k: v.numpy() for k, v in next(iter(msg.content.array_records.values())).items()}
    return received, {k: v + np.float32(step) for k, v in received.items()}


def compress(new: dict, received: dict, mode: str) -> ArrayRecord:
    """What the site's adapter sends: the codec's arrays in a record."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in compress_update(new, received, mode).items()})


def fp16_declared_int8(msg: Message) -> RecordDict:
    received, new = _moved(msg)
    return _fake_reply(compress(new, received, "fp16"), name="evil", compression="int8")


def int8_declared_fp16(msg: Message) -> RecordDict:
    received, new = _moved(msg)
    return _fake_reply(compress(new, received, "int8"), name="evil", compression="fp16")


def unknown_mode(msg: Message) -> RecordDict:
    received, new = _moved(msg)
    return _fake_reply(compress(new, received, "int8"), name="evil", compression="zip")


def wrong_shape(msg: Message) -> RecordDict:
    received, new = _moved(msg)
    sent = compress(new, received, "fp16")
    key = next(iter(sent.keys()))
    sent[key] = Array(np.zeros(3, np.float16))
    return _fake_reply(sent, name="evil", compression="fp16")


def missing_scale(msg: Message) -> RecordDict:
    received, new = _moved(msg)
    sent = compress(new, received, "int8")
    key = next(k for k in sent.keys() if k.endswith("#scale"))
    sent[key] = Array(np.array(np.nan))
    return _fake_reply(sent, name="evil", compression="int8")


def infinite_fp16_update(msg: Message) -> RecordDict:
    received, new = _moved(msg)
    sent = compress(new, received, "fp16")
    key = next(iter(sent.keys()))
    sent[key] = Array(np.full(sent[key].numpy().shape, np.inf, np.float16))
    return _fake_reply(sent, name="evil", compression="fp16")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (fp16_declared_int8, "int8 update cannot be rebuilt"),
        (int8_declared_fp16, "fp16 update cannot be rebuilt"),
        (unknown_mode, "unknown update compression 'zip'"),
        (wrong_shape, "has shape"),
        (missing_scale, "offset and scale"),
        (infinite_fp16_update, "non-finite"),
    ],
)
def test_a_bad_compressed_reply_is_rejected_with_its_reason_and_the_round_goes_on(site_files, tmp_path, bad, reason):
    # Prepare: one real site compressing int8, one site sending a broken compressed update
    grid = FakeGrid({1: real_site(site_files, tmp_path, "a"), 2: bad})
    cfg = CFG.replace(update_compression="int8")
    # Execute
    state, _ = _round(grid, cfg, site_files[2])
    # Assert
    [record] = state.history.rounds
    assert record.sites["evil"]["status"] == "rejected"
    assert reason in record.sites["evil"]["reason"]
    assert record.sites["a"]["status"] == "ok" and record.aggregate["sites-used"] == 1
    assert all(np.isfinite(v).all() for v in _numpy(state.arrays).values())


def test_an_uncompressed_reply_is_still_accepted_in_a_compressed_run(site_files, tmp_path):
    # Prepare: a site that names no compression (an older client) sends plain float32 weights
    def plain(msg: Message) -> RecordDict:
        return _fake_reply(compress(_moved(msg)[1], _moved(msg)[0], "none"), name="old", compression=None)

    grid = FakeGrid({1: real_site(site_files, tmp_path, "a"), 2: plain})
    # Execute
    state, _ = _round(grid, CFG.replace(update_compression="int8"), site_files[2])
    # Assert: both used; the plain reply's bytes are four times the int8 one's
    [record] = state.history.rounds
    assert record.aggregate["sites-used"] == 2
    assert record.sites["old"]["update-bytes"] / record.sites["a"]["update-bytes"] == pytest.approx(4, rel=0.1)


def test_a_reply_with_other_metric_keys_is_rejected_instead_of_stopping_aggregation(site_files, tmp_path):
    # Prepare: Flower's FedAvg raises when replies' metric keys differ; two real sites and an odd one
    def odd(msg: Message) -> RecordDict:
        content = _fake_reply(compress(_moved(msg)[1], _moved(msg)[0], "none"), name="odd", compression=None)
        content["metrics"]["extra"] = 1.0
        return content

    grid = FakeGrid({1: real_site(site_files, tmp_path, "a"), 2: real_site(site_files, tmp_path, "b"), 3: odd})
    # Execute
    state, _ = _round(grid, CFG, site_files[2])
    # Assert
    [record] = state.history.rounds
    assert record.sites["odd"]["status"] == "rejected" and "metric keys" in record.sites["odd"]["reason"]
    assert record.aggregate["sites-used"] == 2
