"""Update compression: the bounds each codec keeps, and the layouts it refuses (plain numpy, no Flower)."""

import numpy as np
import pytest

from common.compression import LO, SCALE, compress_update, decompress_update, quantize_int8
from common.weights import payload_bytes

FP16_REL = 2.0**-11  # half a unit in the last place of float16, relative
FP16_SUBNORMAL = 2.0**-25  # half the spacing of float16 subnormals, absolute


def _records(seed=0, update_scale=1e-2):
    rng = np.random.default_rng(seed)
    ref = {"w": rng.normal(0, 1, (64, 32)).astype(np.float32), "b": rng.normal(0, 1, 32).astype(np.float32),
           "steps": np.array([5], np.int64)}
    new = {"w": ref["w"] + rng.normal(0, update_scale, (64, 32)).astype(np.float32),
           "b": ref["b"] + rng.normal(0, update_scale, 32).astype(np.float32), "steps": np.array([6], np.int64)}
    return new, ref


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
        assert sent[key].dtype == np.float16
        true = new[key].astype(np.float64)
        delta = true - ref[key]
        bound = FP16_REL * np.abs(delta) + FP16_SUBNORMAL + _f32_half_ulp(true)
        assert np.all(np.abs(back[key] - true) <= bound)
    np.testing.assert_array_equal(back["steps"], new["steps"])


@pytest.mark.parametrize("update_scale", [1e-2, 1.0, 1e-6])
def test_int8_error_is_at_most_half_a_step_per_element(update_scale):
    # Prepare
    new, ref = _records(update_scale=update_scale)
    # Execute
    sent = compress_update(new, ref, "int8")
    back = decompress_update(sent, ref, "int8")
    # Assert
    for key in ("w", "b"):
        assert sent[key].dtype == np.uint8
        scale = float(sent[key + SCALE])
        true = new[key].astype(np.float64)
        delta = true - ref[key]
        assert scale == pytest.approx((delta.max() - delta.min()) / 255)
        err = np.abs(back[key] - true)
        assert np.all(err <= scale / 2 + _f32_half_ulp(true) + 1e-12)
    np.testing.assert_array_equal(back["steps"], new["steps"])


def test_int8_of_a_constant_update_is_exact():
    codes, lo, scale = quantize_int8(np.full((3, 4), 0.25))
    assert scale == 0.0 and lo == 0.25 and not codes.any()


def test_compressed_updates_are_smaller():
    # Prepare: a tensor big enough that per-array headers do not matter
    rng = np.random.default_rng(0)
    ref = {"w": rng.normal(0, 1, 100_000).astype(np.float32)}
    new = {"w": ref["w"] + np.float32(0.01)}
    # Execute
    size = {m: payload_bytes(compress_update(new, ref, m)) for m in ("none", "fp16", "int8")}
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
    as_numpy = {k: v for k, v in ref.items()}
    # Execute
    back = decompress_update(compress_update(new, ref, mode), as_numpy, mode)
    # Assert
    np.testing.assert_array_equal(back["steps"], [6])
    np.testing.assert_allclose(back["w"], new["w"], atol=1e-3)


@pytest.mark.parametrize(("mode", "bad"), [("fp16", 1e6), ("fp16", np.nan), ("int8", np.inf)])
def test_an_update_that_the_codec_cannot_carry_is_refused_at_the_site(mode, bad):
    new, ref = _records()
    w = new["w"].copy()
    w[0, 0] = bad
    new["w"] = w
    with pytest.raises(ValueError, match="finite"):
        compress_update(new, ref, mode)


def test_payload_bytes_is_the_protobuf_size_within_a_fraction_of_a_percent():
    from server.records import numpy_to_record, record_bytes

    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.normal(0, 1, 10_000).astype(np.float32) for i in range(5)}
    assert payload_bytes(arrays) == 5 * 40_000  # the data alone
    assert payload_bytes(arrays) / record_bytes(numpy_to_record(arrays)) == pytest.approx(1, abs=0.005)


def test_int8_side_arrays_are_named_after_their_tensor():
    new, ref = _records()
    sent = compress_update(new, ref, "int8")
    assert {"w" + LO, "w" + SCALE, "b" + LO, "b" + SCALE} <= set(sent.keys())
    assert "steps" + LO not in sent  # integer buffers travel as they are
