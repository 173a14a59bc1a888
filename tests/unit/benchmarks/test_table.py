"""The benchmark table: targets, verdicts, the README block, the figure naming rule."""

import json

import pytest

from benchmarks import table
from benchmarks._util import RESULTS_DIR


def _write(folder, name, figures, units, quick=False):
    doc = {"benchmark": name, "figures": figures, "units": units, "machine": {"params": {"quick": quick}}}
    (folder / f"{name}.json").write_text(json.dumps(doc))


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    _write(folder, "dp_overhead", {"cnn_plain_images_per_s": 300.0, "cnn_dp_hooks_over_plain_ratio": 1.7,
                                   "cnn_dp_ew_over_plain_ratio": 1.2, "resnet18_dp_ew_over_plain_ratio": 4.0},
           {"cnn_plain_images_per_s": "images/s", "cnn_dp_hooks_over_plain_ratio": "x",
            "cnn_dp_ew_over_plain_ratio": "x", "resnet18_dp_ew_over_plain_ratio": "x"})
    _write(folder, "fl_overhead", {"fl_steady_rounds_over_local_ratio": 1.1, "ray_startup_s": 20.0},
           {"fl_steady_rounds_over_local_ratio": "x", "ray_startup_s": "s"}, quick=True)
    _write(folder, "scale", {"cnn_100_sites_5_rounds_wall_s": 600.0}, {"cnn_100_sites_5_rounds_wall_s": "s"})
    return folder


def test_rows_carry_targets_and_verdicts(results):
    # Execute
    got = {(r.benchmark, r.figure): r for r in table.rows(table.load_results(results))}
    # Assert
    assert got[("dp_overhead", "cnn_dp_hooks_over_plain_ratio")].met is False
    assert got[("dp_overhead", "cnn_dp_ew_over_plain_ratio")].met is True
    assert got[("dp_overhead", "cnn_dp_ew_over_plain_ratio")].target == "<= 1.5"
    assert got[("dp_overhead", "resnet18_dp_ew_over_plain_ratio")].met is None  # the target is for the CNN
    assert got[("dp_overhead", "cnn_plain_images_per_s")].met is None
    assert got[("fl_overhead", "fl_steady_rounds_over_local_ratio")].met is True
    assert got[("scale", "cnn_100_sites_5_rounds_wall_s")].met is False  # "under 10 minutes" is strict


def test_markdown_table_has_one_row_per_figure(results):
    # Execute
    text = table.render(results)
    # Assert
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| benchmark | figure | value | unit | target | met? |"
    assert len(lines) == 1 + 7
    assert "| dp_overhead | `cnn_dp_hooks_over_plain_ratio` | 1.7 | x | <= 1.5 | **no** |" in lines
    assert "| fl_overhead (quick) | `fl_steady_rounds_over_local_ratio` | 1.1 | x | <= 1.2 | yes |" in lines


def test_write_readme_replaces_only_the_marked_block(results, tmp_path):
    # Prepare
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{table.START}\nold table\n{table.END}\nafter\n")
    # Execute
    rc = table.main(["--results", str(results), "--write-readme", "--readme", str(readme)])
    # Assert
    text = readme.read_text()
    assert rc == 0
    assert text.startswith("# Title\n\nbefore\n" + table.START + "\n- ")  # the verdicts; the table is elsewhere
    assert "benchmarks/README.md" in text and "\n| benchmark | figure |" not in text
    assert text.endswith(table.END + "\nafter\n")
    assert "old table" not in text
    assert table.main(["--results", str(results), "--write-readme", "--readme", str(readme)]) == 0
    assert readme.read_text() == text  # idempotent


def test_each_target_is_stated_met_or_not_with_its_headline_figure(results):
    # Prepare: the fixture has no default-mode figure for the CNN
    docs = table.load_results(results)
    # Execute
    lines = table.verdicts(docs)
    # Assert
    assert len(lines) == len(table.TARGETS)
    assert lines[0].startswith("- DP-SGD at most 1.5x the plain time (CNN): no result yet")
    assert "**met**, `fl_overhead.fl_steady_rounds_over_local_ratio` = 1.1 x (target <= 1.2) (quick run)" in lines[1]
    assert "**not met**, `scale.cnn_100_sites_5_rounds_wall_s` = 600 s (target < 600)" in lines[2]


def test_every_target_has_a_headline_figure_that_it_applies_to():
    for t in table.TARGETS:
        assert t.applies(t.benchmark, t.headline)


def test_write_readme_without_markers_fails_clearly(results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    assert table.main(["--results", str(results), "--write-readme", "--readme", str(readme)]) == 1
    assert "benchmarks:start" in capsys.readouterr().err
    assert readme.read_text() == "# Title\n"


# ------------------------------------------------------------------ naming rule
@pytest.mark.parametrize(
    ("figures", "units", "problems"),
    [
        ({"cnn_dp_hooks_over_plain_ratio": 1.2}, {"cnn_dp_hooks_over_plain_ratio": "x"}, 0),
        ({"cnn_dp_hooks_over_plain": 1.2}, {"cnn_dp_hooks_over_plain": "x"}, 1),  # a ratio without "ratio"
        ({"cnn_ratio_s": 1.2}, {"cnn_ratio_s": "s"}, 1),  # "ratio" on something that is not one
        ({"cnn_wall_s": 1.2}, {}, 1),  # no unit
    ],
)
def test_naming_rule(figures, units, problems):
    assert len(table.naming_problems({"figures": figures, "units": units})) == problems


@pytest.mark.parametrize("path", sorted(RESULTS_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_recorded_results_follow_the_naming_rule(path):
    doc = json.loads(path.read_text())
    assert table.naming_problems(doc) == []
    assert doc["benchmark"] == path.stem
