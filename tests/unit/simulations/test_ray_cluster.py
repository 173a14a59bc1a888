"""Where a simulation runs: the cluster it is told about, else a local Ray instance of its own."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest

from common.errors import ConfigError
from server.abortable_grid import AbortableGrid, RunAborted
from simulations.ray_cluster import cluster_address, code_version, init_kwargs, reachable


def test_the_flag_wins_over_ray_address_and_neither_means_a_local_instance(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster_address(None) == "10.0.0.5:6379"
    assert cluster_address("10.0.0.9:6390") == "10.0.0.9:6390"
    assert cluster_address("local") is None


def test_a_cluster_is_joined_without_sizing_it_and_a_local_instance_is_sized_and_never_found():
    joined = init_kwargs("10.0.0.5:6379")
    assert joined["address"] == "10.0.0.5:6379"
    assert "num_cpus" not in joined and "num_gpus" not in joined  # Ray refuses them when attaching
    own = init_kwargs(None, cpus=3, gpus=0)
    assert own["address"] == "local" and own["num_cpus"] == 3 and own["num_gpus"] == 0
    assert "PYTHONPATH" in own["runtime_env"]["env_vars"]


def test_an_address_where_nothing_listens_is_refused_at_once():
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10


def test_a_listening_head_is_accepted_and_a_malformed_address_or_a_missing_auto_is_refused(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert reachable(f"127.0.0.1:{port}") == f"127.0.0.1:{port}"
        assert reachable(f"ray://127.0.0.1:{port}") == f"ray://127.0.0.1:{port}"
        monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
        assert reachable("auto") == f"127.0.0.1:{port}"
    (tmp_path / "ray" / "ray_current_cluster").unlink()
    with pytest.raises(ConfigError, match="no Ray cluster was started"):
        reachable("auto")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        reachable("a-cluster")


def test_the_code_version_changes_with_any_source_file(tmp_path):
    for package in ("common", "client", "server", "simulations"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "a.py").write_text("x = 1\n")
    before = code_version(tmp_path)
    assert code_version(tmp_path) == before
    (tmp_path / "client" / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) != before


class _SilentGrid:
    """A grid whose nodes never answer (the simulation runtime died under it)."""

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        return [f"m{k}" for k, _ in enumerate(messages)]

    def pull_messages(self, ids):  # noqa: ANN001, ANN201
        return []

    def get_node_ids(self):  # noqa: ANN201
        return [1, 2]


class _AnsweringGrid(_SilentGrid):
    def pull_messages(self, ids):  # noqa: ANN001, ANN201
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ids]


def test_a_wait_on_a_dead_runtime_ends_within_a_poll_of_the_abort():
    abort = threading.Event()
    grid = AbortableGrid(_SilentGrid(), abort, ["the simulation runtime crashed (ValueError: boom)"])
    threading.Timer(0.3, abort.set).start()
    t0 = time.monotonic()
    with pytest.raises(RunAborted, match="ValueError: boom"):
        grid.send_and_receive([object(), object()], timeout=None)  # would wait forever
    assert time.monotonic() - t0 < 5
    with pytest.raises(RunAborted):
        grid.get_node_ids()


def test_replies_pass_through_as_flowers_own_wait_gives_them():
    grid = AbortableGrid(_AnsweringGrid(), threading.Event())
    replies = list(grid.send_and_receive([object(), object(), object()], timeout=5))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert list(grid.get_node_ids()) == [1, 2]


def test_a_node_sees_a_shared_folder_only_when_it_holds_the_drivers_token(tmp_path):
    from simulations.ray_cluster import _MARKER, _probe

    shared, private = tmp_path / "shared", tmp_path / "elsewhere"
    shared.mkdir()
    private.mkdir()
    (shared / _MARKER).write_text("token-a")
    (private / _MARKER).write_text("another run's token")
    answer = _probe([str(shared), str(private), str(tmp_path / "missing")], ["token-a", "token-b", "token-c"])
    assert answer["seen"] == [True, False, False]
    assert answer["code"] == code_version()
