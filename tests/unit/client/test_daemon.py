"""``implantfl-client start``: what it checks before connecting, and how it tells an unregistered site."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from client.site.daemon import prepare
from common.errors import ConfigError


@pytest.fixture
def site_toml(tmp_path, small_site, catalog):
    shutil.move(small_site, tmp_path / "xrays")
    catalog.save(tmp_path / "catalog.json")

    def write(extra: str = "") -> object:
        path = tmp_path / "site.toml"
        path.write_text(f'[site]\nname = "hosp-a"\ndata-dir = "xrays"\ncatalog = "catalog.json"\n{extra}'
                        '[superlink]\naddress = "127.0.0.1:9092"\n')
        return path

    return write


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_the_machine_does_not_have_is_refused_before_connecting(site_toml):
    with pytest.raises(ConfigError, match=r"\[site\] device.*CUDA is not available"):
        prepare(site_toml('device = "cuda"\n'), insecure=True)


def test_a_site_without_an_encoder_still_starts_and_one_that_cannot_be_read_is_refused(site_toml, tmp_path):
    cmd, _ = prepare(site_toml(), insecure=True)
    assert cmd[0].endswith("flower-supernode")
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "encoder.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"\[site\] encoder"):
        prepare(site_toml('encoder = "enc"\n'), insecure=True)


def test_an_unregistered_key_is_explained_with_the_operators_command(capsys, tmp_path):
    # Prepare: a stand-in SuperNode that fails the way flower-supernode does for an unknown key
    from client.site.daemon_cli import EXIT_NOT_REGISTERED, run_supernode

    fake = [sys.executable, "-c", "print('ERROR: Failed to activate SuperNode.'); raise SystemExit(1)",
            "--auth-supernode-private-key", str(tmp_path / "keys" / "site.key")]
    # Execute
    code = run_supernode(fake, {"PATH": ""})
    # Assert: Flower's line passes through, then ours names the key file and the command to run
    out = capsys.readouterr()
    assert code == EXIT_NOT_REGISTERED
    assert "Failed to activate SuperNode" in out.out
    assert "implantfl-server register --public-key site.pub --config server.toml" in out.err
    assert str(tmp_path / "keys" / "site.pub") in out.err
