"""Shared test helpers."""

from __future__ import annotations

import itertools
import time

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
