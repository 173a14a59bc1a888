"""Update compression bounds, the benchmark table, the figure naming rule, and the DP modes the benchmark compares."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from benchmarks import table
from benchmarks._util import RESULTS_DIR
from common.compression import (
    LO,
    SCALE,
    compress_update,
    decompress_update,
    payload_bytes,
    quantize_int8,
    record_bytes,
)

FP16_REL = 2.0**-11  # half a unit in the last place of float16, relative
FP16_SUBNORMAL = 2.0**-25  # half the spacing of float16 subnormals, absolute


def _records(seed=0, update_scale=1e-2):
    rng = np.random.default_rng(seed)
    ref = {"w": rng.normal(0, 1, (64, 32)).astype(np.float32), "b": rng.normal(0, 1, 32).astype(np.float32),
           "steps": np.array([5], np.int64)}
    new = {"w": ref["w"] + rng.normal(0, update_scale, (64, 32)).astype(np.float32),
           "b": ref["b"] + rng.normal(0, update_scale, 32).astype(np.float32), "steps": np.array([6], np.int64)}
    as_record = lambda d: ArrayRecord({k: Array(v) for k, v in d.items()})  # noqa: E731
    return as_record(new), as_record(ref)


def _f32_half_ulp(x):
    return np.spacing(np.abs(x).astype(np.float32)).astype(np.float64) / 2


# ------------------------------------------------------------------ compression
def test_none_sends_the_weights_unchanged():
    new, ref = _records()
    assert compress_update(new, ref, "none") is new
    assert decompress_update(new, ref, "none") is new


@pytest.mark.parametrize("update_scale", [1e-2, 1.0, 1e-6])
def test_fp16_round_trip_is_exact_to_fp16_precision(update_scale):
    # Prepare
    new, ref = _records(update_scale=update_scale)
    # Execute
    sent = compress_update(new, ref, "fp16")
    back = decompress_update(sent, ref, "fp16")
    # Assert: every float array went as float16; the error is float16 rounding of the update
    for key in ("w", "b"):
        assert sent[key].numpy().dtype == np.float16
        true = new[key].numpy().astype(np.float64)
        delta = true - ref[key].numpy()
        bound = FP16_REL * np.abs(delta) + FP16_SUBNORMAL + _f32_half_ulp(true)
        assert np.all(np.abs(back[key].numpy() - true) <= bound)
    np.testing.assert_array_equal(back["steps"].numpy(), new["steps"].numpy())


@pytest.mark.parametrize("update_scale", [1e-2, 1.0, 1e-6])
def test_int8_error_is_at_most_half_a_step_per_element(update_scale):
    # Prepare
    new, ref = _records(update_scale=update_scale)
    # Execute
    sent = compress_update(new, ref, "int8")
    back = decompress_update(sent, ref, "int8")
    # Assert
    for key in ("w", "b"):
        assert sent[key].numpy().dtype == np.uint8
        scale = float(sent[key + SCALE].numpy())
        true = new[key].numpy().astype(np.float64)
        delta = true - ref[key].numpy()
        assert scale == pytest.approx((delta.max() - delta.min()) / 255)
        err = np.abs(back[key].numpy() - true)
        assert np.all(err <= scale / 2 + _f32_half_ulp(true) + 1e-12)
    np.testing.assert_array_equal(back["steps"].numpy(), new["steps"].numpy())


def test_int8_of_a_constant_update_is_exact():
    codes, lo, scale = quantize_int8(np.full((3, 4), 0.25))
    assert scale == 0.0 and lo == 0.25 and not codes.any()


def test_compressed_updates_are_smaller():
    # Prepare: a tensor big enough that per-array headers do not matter
    rng = np.random.default_rng(0)
    ref = ArrayRecord({"w": Array(rng.normal(0, 1, 100_000).astype(np.float32))})
    new = ArrayRecord({"w": Array(ref["w"].numpy() + np.float32(0.01))})
    # Execute
    size = {m: record_bytes(compress_update(new, ref, m)) for m in ("none", "fp16", "int8")}
    # Assert
    assert size["fp16"] / size["none"] == pytest.approx(0.5, abs=0.01)
    assert size["int8"] / size["none"] == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize(("sent_as", "read_as"), [("fp16", "int8"), ("int8", "fp16"), ("none", "fp16")])
def test_a_record_in_another_layout_is_refused(sent_as, read_as):
    new, ref = _records()
    with pytest.raises(ValueError, match="update|array"):
        decompress_update(compress_update(new, ref, sent_as), ref, read_as)


def test_unknown_mode_is_refused():
    new, ref = _records()
    with pytest.raises(ValueError, match="choose one of"):
        compress_update(new, ref, "zip")


@pytest.mark.parametrize("mode", ["fp16", "int8"])
def test_the_server_can_rebuild_from_numpy_arrays_and_integer_buffers_pass_unchanged(mode):
    # Prepare: the server holds the global weights as numpy arrays
    new, ref = _records()
    as_numpy = {k: v.numpy() for k, v in ref.items()}
    # Execute
    back = decompress_update(compress_update(new, ref, mode), as_numpy, mode)
    # Assert
    np.testing.assert_array_equal(back["steps"].numpy(), [6])
    np.testing.assert_allclose(back["w"].numpy(), new["w"].numpy(), atol=1e-3)


@pytest.mark.parametrize(("mode", "bad"), [("fp16", 1e6), ("fp16", np.nan), ("int8", np.inf)])
def test_an_update_that_the_codec_cannot_carry_is_refused_at_the_site(mode, bad):
    new, ref = _records()
    w = new["w"].numpy().copy()
    w[0, 0] = bad
    new["w"] = Array(w)
    with pytest.raises(ValueError, match="finite"):
        compress_update(new, ref, mode)


def test_payload_bytes_is_the_protobuf_size_within_a_fraction_of_a_percent():
    rng = np.random.default_rng(0)
    record = ArrayRecord({f"t{i}": Array(rng.normal(0, 1, 10_000).astype(np.float32)) for i in range(5)})
    assert 5 * 40_000 < payload_bytes(record) <= 5 * (40_000 + 256)  # the data plus each array's .npy header
    assert payload_bytes(record) / record_bytes(record) == pytest.approx(1, abs=0.002)


def test_int8_side_arrays_are_named_after_their_tensor():
    new, ref = _records()
    sent = compress_update(new, ref, "int8")
    assert {"w" + LO, "w" + SCALE, "b" + LO, "b" + SCALE} <= set(sent.keys())
    assert "steps" + LO not in sent  # integer buffers travel as they are


# ------------------------------------------------------------------ table
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


# ------------------------------------------------------------------ the DP modes dp_overhead compares
def _dp_data(n=16):
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 32, 32), dtype=np.float32), rng.integers(0, 3, n)


def _train(mode, x, y, **kw):
    from client.train import TrainSettings, train_local
    from common.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", num_classes=3, image_size=32)
    settings = TrainSettings(dp=True, grad_sample_mode=mode, **{"batch_size": 4, **kw})
    result = train_local(model, x, y, settings, device=torch.device("cpu"))
    return result, torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("mode", ["ew", "ghost"])
def test_dp_mode_clips_like_hooks(mode):
    # Prepare: zero noise, tight clipping (every per-sample gradient is clipped), same batches
    x, y = _dp_data()
    kw = dict(noise_multiplier=0.0, max_grad_norm=0.01, poisson_sampling=False)
    # Execute
    _, hooks = _train("hooks", x, y, **kw)
    _, other = _train(mode, x, y, **kw)
    # Assert
    torch.testing.assert_close(other, hooks, rtol=0, atol=1e-6)


def test_ghost_clipping_survives_empty_poisson_batches():
    # Prepare: 3 examples with batch size 1: Poisson sampling draws empty batches
    x, y = _dp_data(3)
    # Execute
    result, weights = _train("ghost", x, y, epochs=4, batch_size=1)
    # Assert: every step counted (the accountant's view), weights still finite
    assert result.steps == 12
    assert torch.isfinite(weights).all()


def test_ghost_clipping_refuses_losses_it_cannot_clip():
    x, y = _dp_data()
    with pytest.raises(ValueError, match="ghost"):
        _train("ghost", x, y, loss="fedrs")
