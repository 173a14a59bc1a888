"""`implantfl-sim compare`: one row per run directory, read from its results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import InvalidInputError
from simulations.cli import main
from simulations.summary import compare_runs


def _run(root: Path, name: str, *, loss: str, acc: float, baseline: float | None, eps: list[float]) -> Path:
    run = root / name
    run.mkdir()
    res = {
        "config": {"preset": "hip-consortium", "model": "cnn", "strategy": "fedavg", "local-loss": loss,
                   "dp": bool(eps), "num-server-rounds": 10},
        "sites": {f"s{i}": {} for i in range(3)},
        "final": {"accuracy": acc, "macro_f1": acc / 2, "macro_auc": 0.9},
        "privacy": {f"s{i}": {"epsilon": e} for i, e in enumerate(eps)},
        "timing": {"wall_s": 12.5},
    }
    if baseline is not None:
        res["baseline"] = {"centralized": {"final": {"accuracy": baseline}}}
    (run / "results.json").write_text(json.dumps(res))
    return run


def test_rows_carry_the_method_the_baseline_and_the_largest_epsilon(tmp_path):
    # Prepare
    a = _run(tmp_path, "a", loss="ce", acc=0.4, baseline=0.8, eps=[7.5, 8.0, 7.9])
    b = _run(tmp_path, "b", loss="logit-adjust", acc=0.5, baseline=None, eps=[])
    # Execute
    rows = compare_runs([a, b])
    # Assert
    assert [r["run"] for r in rows] == ["a", "b"]
    assert [r["local_loss"] for r in rows] == ["ce", "logit-adjust"]
    assert rows[0]["baseline_accuracy"] == 0.8 and rows[1]["baseline_accuracy"] is None
    assert rows[0]["max_epsilon"] == 8.0 and rows[1]["max_epsilon"] is None
    assert rows[0]["sites"] == 3 and rows[0]["macro_auc"] == 0.9


def test_json_output_is_the_rows(tmp_path, capsys):
    a = _run(tmp_path, "a", loss="fedrs", acc=0.3, baseline=0.7, eps=[1.0])
    assert main(["compare", "--json", str(a)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == compare_runs([a])


def test_a_folder_without_results_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="empty: no readable results.json"):
        compare_runs([tmp_path / "empty"])


def test_markdown_output_has_a_header_and_one_line_per_run(tmp_path, capsys):
    a = _run(tmp_path, "a", loss="ce", acc=0.25, baseline=0.75, eps=[2.0])
    b = _run(tmp_path, "b", loss="fedrs", acc=0.5, baseline=None, eps=[])
    assert main(["compare", "--markdown", str(a), str(b)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | preset |") and lines[1].startswith("|---|")
    assert "| a | hip-consortium |" in lines[2] and "0.2500" in lines[2] and "0.7500" in lines[2]
    assert "| b |" in lines[3] and "fedrs" in lines[3]


@pytest.mark.parametrize("width", [80, 250])
def test_the_terminal_table_keeps_every_value_whole_at_any_width(tmp_path, width):
    from rich.console import Console

    from simulations.summary import print_compare

    # Prepare
    a = _run(tmp_path, "fedavg-run", loss="ce", acc=0.4321, baseline=0.8025, eps=[7.5, 7.9422])
    b = _run(tmp_path, "logit-adjust-run", loss="logit-adjust", acc=0.5, baseline=None, eps=[])
    console = Console(width=width, record=True, color_system=None)
    # Execute
    print_compare(compare_runs([a, b]), console=console)
    # Assert: nothing cut to an ellipsis; the runs' figures appear in full
    text = console.export_text()
    assert "…" not in text
    for value in ("fedavg-run", "logit-adjust-run", "hip-consortium", "0.4321", "0.8025", "7.9422", "max_epsilon"):
        assert value in text
