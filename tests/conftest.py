"""Shared test helpers."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator

import pytest
from flwr.app import Message, Metadata, RecordDict
from flwr.app.message.message import make_message

_ids = itertools.count(1)


def reply_message(content: RecordDict, *, src_node_id: int = 7, message_type: str = "train") -> Message:
    """A reply as the server receives it from a node (what Grid.send_and_receive returns)."""
    meta = Metadata(run_id=1, message_id=f"m{next(_ids)}", src_node_id=src_node_id, dst_node_id=0,
                    reply_to_message_id="q", group_id="1", created_at=time.time(), ttl=60.0, message_type=message_type)
    return make_message(metadata=meta, content=content)


@pytest.fixture
def make_reply():
    return reply_message


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads, then restore the setting for the tests that follow.

    Tiny models and batches gain nothing from intra-op threads, and on shared CI cores
    extra threads spin against other jobs (3-10x slower).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a test (``pytestmark = pytest.mark.usefixtures("one_thread")`` for a module)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_per_module() -> Iterator[None]:
    """One intra-op torch thread for a whole module (its module-scoped fixtures train models too)."""
    with torch_threads(1):
        yield


# A small public encoder for every test that runs the default route (a head on the encoder): generated designs,
# 64-pixel crops, pretrained once per session (about a minute on 2 cores). TEST_ENCODER sizes it.
TEST_ENCODER = {"designs": 250, "images_per_design": 6, "epochs": 10}


@pytest.fixture(scope="session")
def public_encoder(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - Path
    from simulations.pretrain.pipeline import PretrainOptions, pretrain

    root = tmp_path_factory.mktemp("public-encoder")
    with torch_threads(2):
        pretrain(PretrainOptions(out=root / "encoder", progress=False, cache_root=root / "cache", **TEST_ENCODER))
    return root / "encoder"
