"""Operator CLI pieces without processes: PKI, server.toml, flwr config, run status, status/export.

The last section covers the site side of a deployment (key pair, ``[superlink]/[tls]/[auth]``
sections) because it is the other half of the same handshake.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

import pytest

from common.catalog import Catalog, ImplantClass
from common.config import RunConfig
from common.errors import ConfigError
from server.cli import main
from server.deploy import runs, superlink
from server.deploy.flwr_cli import DeployError, RunStatus, parse_json_output, parse_run_status
from server.deploy.flwr_config import read_connection, write_connection
from server.deploy.pki import certificate_sans, create_pki, san_entries
from server.server_config import ServerConfig


# ---------------------------------------------------------------------- PKI
def test_server_certificate_names_every_host_plus_loopback_and_is_signed_by_the_ca(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    # Execute
    paths = create_pki(tmp_path / "certs", ["fl.consortium.example", "10.0.0.5", "2001:db8::7"])
    # Assert
    assert sorted(certificate_sans(paths.server_cert)) == sorted(
        ["fl.consortium.example", "localhost", "10.0.0.5", "2001:db8::7", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm))
    assert server.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    for key in (paths.ca_key, paths.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_no_loopback_leaves_only_the_given_hosts(tmp_path):
    paths = create_pki(tmp_path, ["fl.example.org"], loopback=False)
    assert certificate_sans(paths.server_cert) == ["fl.example.org"]


@pytest.mark.parametrize(
    ("hosts", "loopback", "dns", "ips"),
    [
        (["FL.Example.org.", "fl.example.org"], True, ["fl.example.org", "localhost"], ["127.0.0.1"]),
        (["[::1]", "127.0.0.1"], True, ["localhost"], ["::1", "127.0.0.1"]),
        (["192.168.1.10"], False, [], ["192.168.1.10"]),
    ],
)
def test_san_entries_split_and_deduplicate(hosts, loopback, dns, ips):
    assert san_entries(hosts, loopback=loopback) == (dns, ips)


@pytest.mark.parametrize("bad", ["", "has space.example", "a..b"])
def test_bad_host_names_are_refused(bad):
    with pytest.raises(ConfigError):
        san_entries([bad])


def test_an_existing_pki_is_not_overwritten_without_force(tmp_path):
    create_pki(tmp_path, [])
    with pytest.raises(ConfigError, match="--force"):
        create_pki(tmp_path, [])
    assert main(["certs", "--out", str(tmp_path), "--host", "x.example"]) == 2
    assert main(["certs", "--out", str(tmp_path), "--host", "x.example", "--force"]) == 0
    assert "x.example" in certificate_sans(tmp_path / "server.pem")


# ---------------------------------------------------------------------- server.toml
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def test_a_full_server_config_resolves_paths_relative_to_its_file(tmp_path):
    # Prepare
    path = _write(tmp_path, """
catalog = "fed/catalog.json"
checkpoint-dir = "/abs/ckpt"
[superlink]
address = "0.0.0.0"
port = 9443
state-dir = "st"
[run]
num-server-rounds = 3
dp = false
round-timeout-s = 120
""")
    # Execute
    cfg = ServerConfig.load(path)
    # Assert
    assert (cfg.address, cfg.port, cfg.connect_host, cfg.control_address) == ("0.0.0.0", 9443, "127.0.0.1", "127.0.0.1:9443")
    assert cfg.state_dir == tmp_path / "st" and cfg.certs_dir == tmp_path / "certs"
    assert cfg.catalog == tmp_path / "fed" / "catalog.json" and cfg.checkpoint_dir == Path("/abs/ckpt")
    assert cfg.run_config().num_server_rounds == 3 and cfg.run_config({"dp": True}).dp
    assert cfg.flwr_home == tmp_path / "st" / "flwr"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("catalogue = 'x'", "unknown key(s) catalogue"),
        ("[superlink]\nhost = 'x'", "[superlink]: unknown key(s) host"),
        ("[superlink]\nport = 70000", "port must be an integer"),
        ("[superlink]\nport = '9092'", "port must be an integer"),
        ("[superlink]\naddress = 'fl.example:9092'", "put the port in [superlink] port"),
        ("[run]\nnum-rounds = 3", "unknown run config key(s): num-rounds"),
        ("[run]\nlearning-rate = 50.0", "learning-rate = 50.0 is out of range"),
        ("[run]\nmin-fit-sites = 3\nmin-available-sites = 2", "min-fit-sites cannot exceed"),
        ("[run]\ncatalog = 'c.json'", "set it at the top level"),
        ("[run]\ndp = 'maybe'", "dp must be true or false"),
        ("superlink = 3", "[superlink] must be a table"),
        ("[superlink\n", "not valid TOML"),
    ],
)
def test_bad_server_configs_are_rejected_with_the_reason(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as err:
        ServerConfig.load(_write(tmp_path, text))
    assert fragment in str(err.value)


def test_start_with_a_bad_config_or_no_certificates_exits_2_and_starts_nothing(tmp_path, capsys):
    # Prepare: valid config, but no PKI in certs/
    path = _write(tmp_path, "[superlink]\nport = 1\n")
    # Execute / Assert
    assert main(["start", "--config", str(path)]) == 2
    assert "implantfl-server certs" in capsys.readouterr().err
    assert not (tmp_path / "state" / "superlink.pid").exists()
    assert main(["start", "--config", str(tmp_path / "missing.toml")]) == 2


def test_superlink_command_is_secure_by_default_and_offline_safe(tmp_path):
    # Prepare
    create_pki(tmp_path / "certs", [])
    cfg = ServerConfig.load(_write(tmp_path, "[superlink]\nport = 9555\n"))
    # Execute
    secure = superlink.command(cfg, insecure=False)
    insecure = superlink.command(cfg, insecure=True)
    # Assert
    assert "--enable-supernode-auth" in secure and "--insecure" not in secure
    assert secure[secure.index("--ssl-certfile") + 1] == str(tmp_path / "certs" / "server.pem")
    assert secure[secure.index("--ssl-ca-certfile") + 1] == str(tmp_path / "certs" / "ca.crt")
    assert secure[secure.index("--host") + 1] == "127.0.0.1" and secure[secure.index("--port") + 1] == "9555"
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure
    for cmd in (secure, insecure):
        assert "--disable-runtime-dependency-installation" in cmd
        assert cmd[cmd.index("--database") + 1] == str(tmp_path / "state" / "superlink.db")


# ---------------------------------------------------------------------- flwr config.toml
def test_flwr_connection_is_written_with_an_absolute_ca_path_and_flower_parses_it(tmp_path, monkeypatch):
    from flwr.cli.flower_config import parse_superlink_connection

    # Prepare: a pre-existing table must survive; the CA is given relative to the cwd
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text('[superlink.other]\naddress = "10.0.0.1:9000"\ninsecure = true\n')
    monkeypatch.chdir(tmp_path)
    # Execute
    write_connection(home, "implantfl", "127.0.0.1:9092", root_certificates=Path("certs/ca.crt"))
    # Assert
    data = tomllib.loads((home / "config.toml").read_text())
    assert data["superlink"]["default"] == "implantfl"
    assert data["superlink"]["other"]["address"] == "10.0.0.1:9000"
    table = read_connection(home, "implantfl")
    assert table == {"address": "127.0.0.1:9092", "root-certificates": str(tmp_path / "certs" / "ca.crt")}
    conn = parse_superlink_connection(table, "implantfl")
    assert conn.address == "127.0.0.1:9092" and conn.root_certificates == str(tmp_path / "certs" / "ca.crt")


def test_an_insecure_connection_says_so_and_carries_no_certificate(tmp_path):
    write_connection(tmp_path, "implantfl", "127.0.0.1:9092", root_certificates=None, insecure=True)
    assert read_connection(tmp_path, "implantfl") == {"address": "127.0.0.1:9092", "insecure": True}
    with pytest.raises(ConfigError):
        write_connection(tmp_path, "implantfl", "127.0.0.1:9092", root_certificates=None, insecure=False)


# ---------------------------------------------------------------------- flwr output and run status
def _ls(status: str, run_id: str = "42", details: str = "N/A") -> str:
    return json.dumps({"success": True, "runs": [{"run-id": run_id, "status": status, "status-details": details}]})


@pytest.mark.parametrize(
    ("status", "details", "finished", "succeeded"),
    [
        ("finished:completed", "N/A", True, True),
        ("finished:failed", "ServerApp raised ConfigError", True, False),
        ("finished:stopped", "N/A", True, False),
        ("running", "N/A", False, False),
        ("pending", "N/A", False, False),
    ],
)
def test_run_status_is_parsed_from_flwr_ls_json(status, details, finished, succeeded):
    # Execute
    rs = parse_run_status(parse_json_output(_ls(status, details=details)), 42)
    # Assert
    assert (rs.finished, rs.succeeded) == (finished, succeeded)
    assert rs.details == ("" if details == "N/A" else details)


def test_json_is_found_after_other_output_and_a_missing_run_is_an_error():
    text = "Loading project configuration...\nSuccessfully started run 7\n" + _ls("running", "7")
    assert parse_run_status(parse_json_output(text), 7) == RunStatus(7, "running")
    with pytest.raises(DeployError, match="does not know run 8"):
        parse_run_status(parse_json_output(text), 8)
    with pytest.raises(DeployError, match="no JSON"):
        parse_json_output("Traceback (most recent call last): ...")


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [("num-server-rounds=2", "num-server-rounds", 2), ("dp=false", "dp", False), ("delta=1e-5", "delta", 1e-5),
     ("model=cnn", "model", "cnn"), ('model="resnet18"', "model", "resnet18"), ("catalog=/a b/c.json", "catalog", "/a b/c.json")],
)
def test_set_values_are_typed_like_toml(item, key, value):
    assert runs.parse_set([item]) == {key: value}


@pytest.mark.parametrize("bad", ["novalue", "=3", "x=[1, 2]"])
def test_bad_set_items_are_refused(bad):
    with pytest.raises(ConfigError):
        runs.parse_set([bad])


def _catalog(path: Path) -> Path:
    Catalog("test", "1", (ImplantClass("a", "M", "A"), ImplantClass("b", "M", "B"))).save(path)
    return path


def test_run_overrides_are_validated_and_paths_made_absolute(tmp_path):
    # Prepare
    _catalog(tmp_path / "catalog.json")
    cfg = ServerConfig.load(_write(tmp_path, 'catalog = "catalog.json"\n[run]\nnum-server-rounds = 4\n'))
    declared = {**RunConfig().to_flower(), "catalog": "", "checkpoint-dir": ""}
    # Execute
    out = runs.prepare_overrides(cfg, runs.parse_set(["dp=false"]), declared=declared)
    # Assert
    assert out == {"num-server-rounds": 4, "dp": False, "catalog": str(tmp_path / "catalog.json"),
                   "checkpoint-dir": str(tmp_path / "state" / "checkpoint")}
    with pytest.raises(ConfigError, match="min-fit-sites cannot exceed"):
        runs.prepare_overrides(cfg, {"min-fit-sites": 5}, declared=declared)
    with pytest.raises(ConfigError, match="catalog"):
        runs.prepare_overrides(cfg, {"catalog": str(tmp_path / "nope.json")}, declared=declared)


def test_undeclared_run_config_keys_are_named_with_the_lines_to_add():
    with pytest.raises(ConfigError) as err:
        runs.check_declared({"num-server-rounds": 2, "catalog": "/x/c.json", "checkpoint-dir": "/x/ck"},
                            {"num-server-rounds": 10})
    assert 'catalog = ""' in str(err.value) and 'checkpoint-dir = ""' in str(err.value)
    runs.check_declared({"num-server-rounds": 2}, {"num-server-rounds": 10})  # declared: fine


# ---------------------------------------------------------------------- status and export
def _checkpoint(tmp_path: Path, *, rounds: int = 2) -> tuple[Path, Path]:
    import torch
    from flwr.app import ArrayRecord

    from common.models import build_model
    from server.checkpoint import Checkpoint, save_checkpoint
    from server.history import RoundRecord, RunHistory

    catalog_path = _catalog(tmp_path / "catalog.json")
    catalog = Catalog.load(catalog_path)
    cfg = RunConfig(num_server_rounds=rounds, image_size=32)
    torch.manual_seed(0)
    arrays = ArrayRecord(build_model("cnn", num_classes=len(catalog), image_size=32).state_dict())
    history = RunHistory()
    for r in (1, 2):
        rec = RoundRecord(round=r, aggregate={"train-loss": 1.0 / r, "sites-used": 2}, wall_s=3.0)
        rec.sites = {"site-a": {"status": "ok", "reason": "", "train-examples": 40, "epsilon": 0.5 * r,
                                "noise-multiplier": 0.8, "dp-steps": 10, "val-accuracy": 0.4 * r},
                     "site-b": {"status": "budget-exhausted", "reason": "budget spent", "epsilon": 9.0}}
        history.rounds.append(rec)
    meta = {"config": cfg.to_flower(), "catalog-fingerprint": catalog.fingerprint(), "strategy": "fedavg"}
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, Checkpoint(2, arrays, history, meta))
    return ckpt, catalog_path


def test_status_json_reports_rounds_sites_metrics_and_epsilon(tmp_path, capsys):
    # Prepare
    ckpt, _ = _checkpoint(tmp_path, rounds=3)
    cfg_path = _write(tmp_path, "[superlink]\nport = 1\n")
    # Execute
    code = main(["status", "--config", str(cfg_path), "--checkpoint-dir", str(ckpt), "--json"])
    # Assert
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["rounds_done"], out["num_server_rounds"], out["finished"]) == (2, 3, False)
    assert set(out["sites"]) == {"site-a", "site-b"}
    assert out["sites"]["site-a"]["val-accuracy"] == pytest.approx(0.8)
    assert out["sites"]["site-b"]["status"] == "budget-exhausted"
    assert out["epsilon"] == {"site-a": 1.0, "site-b": 9.0}
    assert out["superlink"]["running"] is False


def test_status_before_any_round_says_zero(tmp_path, capsys):
    cfg_path = _write(tmp_path, "[superlink]\nport = 1\n")
    assert main(["status", "--config", str(cfg_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rounds_done"] == 0


def test_export_writes_a_loadable_release_with_a_model_card(tmp_path, capfd):
    from server.release import load_release

    # Prepare
    ckpt, catalog = _checkpoint(tmp_path)
    # Execute
    code = main(["export", "--run", str(ckpt), "--out", str(tmp_path / "release"), "--catalog", str(catalog)])
    # Assert: one line per artefact and a last line; the exporters' internals stay in the debug log
    out = capfd.readouterr()
    files = sorted(p.name for p in (tmp_path / "release").iterdir() if p.is_file())
    assert out.out.count("\n") == len(files) + 1 and all(name in out.out for name in files)
    assert "Torch IR" not in out.out + out.err and "INFO" not in out.out + out.err
    assert code == 0
    rel = load_release(tmp_path / "release")
    assert len(rel.catalog) == 2 and rel.info["image_size"] == 32
    card = (tmp_path / "release" / "model_card.md").read_text()
    privacy = card.split("## Privacy")[1]
    assert "| site-a | 1.00 |" in card and "| site-b |" not in privacy  # it trained in no round of this run
    assert "Refused every round" in privacy and "site-b" in privacy
    # a deployment has no central test set: the card says where its metrics come from
    assert "test set of this simulated run" not in card and "no central test set" in card


def test_export_refuses_another_catalog(tmp_path):
    ckpt, _ = _checkpoint(tmp_path)
    other = tmp_path / "other.json"
    Catalog("test", "2", (ImplantClass("z", "M", "Z"),)).save(other)
    assert main(["export", "--run", str(ckpt), "--out", str(tmp_path / "r"), "--catalog", str(other)]) == 2
    assert main(["export", "--run", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--catalog", str(other)]) == 2


# ---------------------------------------------------------------------- site side
def test_site_keys_are_openssh_p384_and_the_private_half_is_private(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )
    from flwr.cli.supernode.register import try_load_public_key

    from client.site.keys import check_private_key, create_site_keys

    # Execute
    keys = create_site_keys(tmp_path / "keys", name="hospital-a", comment="hospital-a")
    # Assert
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    public = load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert try_load_public_key(keys.public_key)  # what `flwr supernode register` does with the file
    check_private_key(keys.private_key)
    os.chmod(keys.private_key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        check_private_key(keys.private_key)
    with pytest.raises(ConfigError, match="already exists"):
        create_site_keys(tmp_path / "keys", name="hospital-a")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("fl.example.org:9092", "fl.example.org:9092"), ("127.0.0.1:1", "127.0.0.1:1"), ("[::1]:9092", "[::1]:9092")],
)
def test_superlink_addresses_are_parsed(value, expected):
    from client.site.connection import parse_address

    assert parse_address(value) == expected


@pytest.mark.parametrize("bad", ["fl.example.org", "https://fl:9092", "::1:9092", "host:0", "host:http", ":9092"])
def test_bad_superlink_addresses_are_refused(bad):
    from client.site.connection import parse_address

    with pytest.raises(ConfigError):
        parse_address(bad)


@pytest.mark.parametrize(
    ("text", "insecure", "fragment"),
    [
        ("[superlink]\naddress='h:1'\n[auth]\nprivate-key='k'", False, "[tls] root-certificates is missing"),
        ("[superlink]\naddress='h:1'\n[tls]\nroot-certificates='ca.crt'", False, "[auth] private-key is missing"),
        ("[tls]\nroot-certificates='ca.crt'", False, "[superlink] address is missing"),
        ("[superlink]\naddress='h:1'\nport=3", True, "[superlink]: unknown key(s) port"),
        ("[superlink]\naddress='h:1'\n[tls]\nca='x'", True, "[tls]: unknown key(s) ca"),
    ],
)
def test_site_connection_sections_are_validated(tmp_path, text, insecure, fragment):
    from client.site.connection import SiteConnection

    with pytest.raises(ConfigError) as err:
        SiteConnection.from_dict(tomllib.loads(text), base=tmp_path, insecure=insecure)
    assert fragment in str(err.value)
    assert str(tmp_path) not in str(err.value)  # client-side errors never carry paths


def test_site_connection_files_are_checked_without_naming_them(tmp_path):
    from client.site.connection import SiteConnection
    from client.site.keys import create_site_keys

    # Prepare
    create_pki(tmp_path / "pki", [])
    create_site_keys(tmp_path, name="site")
    text = "[superlink]\naddress='127.0.0.1:9092'\n[tls]\nroot-certificates='pki/ca.crt'\n[auth]\nprivate-key='site.key'\n"
    conn = SiteConnection.from_dict(tomllib.loads(text), base=tmp_path)
    # Execute / Assert
    assert conn.root_certificates == tmp_path / "pki" / "ca.crt" and conn.private_key == tmp_path / "site.key"
    conn.check_files()
    (tmp_path / "pki" / "ca.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM certificate") as err:
        conn.check_files()
    assert str(tmp_path) not in str(err.value)
    (tmp_path / "pki" / "ca.crt").unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        conn.check_files()
    conn.check_files(insecure=True)  # insecure mode needs neither file


def test_wait_reports_a_failed_run_and_asks_the_superlink_often_only_near_the_end(tmp_path, monkeypatch):
    from server.deploy import flwr_cli

    # Prepare: the checkpoint already holds the last round; the SuperLink says running, then failed
    cfg = ServerConfig.load(_write(tmp_path, "[superlink]\nport = 1\n"))
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.json").write_text(json.dumps({"round": 2}))
    answers = iter(["running", "finished:failed"])
    calls = []

    def fake_status(run_id, *, connection, flwr_home):
        calls.append(run_id)
        return RunStatus(run_id, next(answers), "ServerApp raised")

    monkeypatch.setattr(flwr_cli, "run_status", fake_status)
    monkeypatch.setattr(runs.time, "sleep", lambda _s: None)
    # Execute
    status = runs.wait_for(5, cfg=cfg, checkpoint_dir=tmp_path / "ck", total_rounds=2, first_check_s=0.0,
                           idle_check_s=1e6, final_check_s=0.0)
    # Assert
    assert (status.status, status.succeeded, calls) == ("finished:failed", False, [5, 5])
    with pytest.raises(DeployError, match="did not finish"):
        runs.wait_for(5, cfg=cfg, checkpoint_dir=tmp_path / "none", total_rounds=2, first_check_s=1e6,
                      timeout_s=1e-3)


# ---------------------------------------------------------------------- what the ServerApp reads
@pytest.mark.parametrize("catalog", [None, ""])
def test_the_serverapp_names_a_missing_catalog_key_even_when_pyproject_declares_it_empty(catalog):
    from flwr.app import Context, RecordDict

    from server.app import RunSetup, _resolve

    # Prepare: pyproject declares `catalog = ""` so that `flwr run --run-config` accepts the key
    run_config = {**RunConfig().to_flower(), "checkpoint-dir": ""}
    if catalog is not None:
        run_config["catalog"] = catalog
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    # Execute / Assert
    with pytest.raises(ConfigError, match="run config needs key 'catalog'"):
        _resolve(RunSetup(), ctx)


def test_the_serverapp_takes_catalog_and_checkpoint_dir_from_the_run_config(tmp_path):
    from flwr.app import Context, RecordDict

    from server.app import RunSetup, _resolve

    catalog = _catalog(tmp_path / "catalog.json")
    run_config = {**RunConfig().to_flower(), "catalog": str(catalog), "checkpoint-dir": str(tmp_path / "ck")}
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    cfg, cat, ckpt = _resolve(RunSetup(), ctx)
    assert (len(cat), ckpt, cfg.num_server_rounds) == (2, tmp_path / "ck", 10)
