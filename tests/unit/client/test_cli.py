"""implantfl-client check / preprocess."""

from __future__ import annotations

import json
import shutil

import pytest

from client.cli import build_parser, main


@pytest.fixture
def fed(tmp_path, small_site, catalog):
    """Synthetic layout: FED/catalog.json and FED/sites/<site>/."""
    root = tmp_path / "FED"
    (root / "sites").mkdir(parents=True)
    shutil.move(small_site, root / "sites" / "site-a")
    catalog.save(root / "catalog.json")
    return root


def test_check_json_with_the_default_catalog(fed, capsys):
    # Execute
    code = main(["check", "--data", str(fed / "sites" / "site-a"), "--json"])
    # Assert
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["accepted"] == 6 and out["rejected"] == {} and out["classes"] == {"stem-a": 3, "stem-b": 3}
    assert out["phi_findings"]["patient-name-present"] == 3


def test_check_prints_a_table(fed, capsys):
    code = main(["check", "--data", str(fed / "sites" / "site-a")])
    out = capsys.readouterr().out
    assert code == 0 and "stem-a" in out and "accepted: 6" in out and "patient-name-present 3" in out


def test_check_with_a_config_and_an_unknown_label_exits_2(fed, capsys):
    # Prepare
    site = fed / "sites" / "site-a"
    config = fed / "site.toml"
    config.write_text(f'[site]\nname = "a"\ndata-dir = "{site}"\ncatalog = "catalog.json"\n'
                      '[labels]\n"Local A" = "stem-a"\n')
    # Execute
    code = main(["check", "--config", str(config)])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and "'Local B'" in err and str(fed) not in err


@pytest.mark.parametrize(
    "argv",
    [["check", "--data", "{tmp}"], ["check"], ["preprocess", "--data", "{site}"]],
    ids=["no-catalog", "no-data", "no-cache"],
)
def test_configuration_errors_exit_2(tmp_path, fed, capsys, argv):
    argv = [a.format(tmp=tmp_path, site=fed / "sites" / "site-a") for a in argv]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_preprocess_twice_does_no_work_the_second_time(fed, tmp_path, capsys):
    # Prepare
    argv = ["preprocess", "--data", str(fed / "sites" / "site-a"), "--cache", str(tmp_path / "cache")]
    # Execute
    first = main(argv)
    out1 = capsys.readouterr().out
    second = main(argv)
    out2 = capsys.readouterr().out
    third = main([*argv, "--json"])
    out3 = json.loads(capsys.readouterr().out)
    # Assert
    assert (first, second, third) == (0, 0, 0)
    assert "processed 6" in out1 and "nothing to do" in out2
    assert out3["processed"] == 0 and out3["from_cache"] == 6 and out3["accepted"] == 6


def test_parser_registers_the_site_commands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"check", "preprocess"} <= set(sub.choices)


def test_check_of_a_site_with_nothing_accepted_exits_non_zero_and_says_so(tmp_path, catalog, capsys):
    # Prepare: a site whose only files are not images
    root = tmp_path / "FED"
    site = root / "sites" / "junk"
    (site / "images").mkdir(parents=True)
    (site / "images" / "a.png").write_bytes(b"not a png")
    (site / "labels.csv").write_text("file,label\nimages/a.png,stem-a\n")
    catalog.save(root / "catalog.json")
    # Execute
    code = main(["check", "--data", str(site), "--json"])
    # Assert
    captured = capsys.readouterr()
    assert code == 3 and "no image of this site was accepted" in captured.err
    assert json.loads(captured.out)["accepted"] == 0


def test_preprocess_builds_the_cache_at_the_runs_image_size(fed, tmp_path, capsys):
    # Prepare: the app's run config (pyproject) decides the crop size a run will read
    from client.cli import _run_image_size

    # Execute
    code = main(["preprocess", "--data", str(fed / "sites" / "site-a"), "--cache", str(tmp_path / "c"), "--json"])
    # Assert: the cache key is the run's parameters, so a run at that size finds it
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["image_size"] == _run_image_size() == 64
    from client.data.cache import SiteCache
    from common.preprocess_params import PreprocessParams

    assert SiteCache(tmp_path / "c", PreprocessParams(image_size=64)).manifest_path.exists()
