"""Privacy ledger: epsilon accumulates across rounds, runs and restarts, and can be audited."""

import json
import logging
from datetime import datetime, timedelta

import pytest

from client.training.privacy import LedgerCorruptError, LedgerRow, PrivacyLedger
from common.errors import ConfigError, InvalidInputError
from common.redact import file_token

ROW_KEYS = {"run_id", "round", "noise_multiplier", "sample_rate", "steps", "delta", "accountant",
            "epsilon_run", "epsilon_cumulative", "timestamp"}
# Opacus' PRV accountant reports the upper end of its estimate, eps_error = 0.01 (absolute)
# above it; PLD (value_discretization_interval 1e-4) is tight. So the two agree within 1%
# plus that 0.01: at small epsilon (case "small-eps", eps ~0.27) this is ~3.7% relative.
PRV_EPS_ERROR = 0.01

# name: ([(noise multiplier, sample rate, steps) per round], delta)
CASES = {
    "steady": ([(1.0, 0.01, 100)] * 3, 1e-5),
    "mixed-noise": ([(1.2, 0.02, 50), (0.9, 0.02, 50), (1.2, 0.02, 50)], 1e-5),
    "small-eps": ([(2.0, 0.004, 500)] * 2, 1e-6),
    "high-rate": ([(0.8, 0.05, 40)] * 2, 1e-5),
}


def _record(ledger, rounds, *, run_id="run-1", delta=1e-5, first_round=1):
    return [
        ledger.record_round(run_id=run_id, round=first_round + i, noise_multiplier=nm, sample_rate=q, steps=s,
                            delta=delta)
        for i, (nm, q, s) in enumerate(rounds)
    ]


def _dp_accounting_epsilon(rounds, delta, *, accountant):
    import dp_accounting
    from dp_accounting import pld, rdp

    ref = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    for nm, q, steps in rounds:
        ref.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(nm)), steps)
    return ref.get_epsilon(delta)


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "state" / "privacy-ledger.jsonl"


def test_cumulative_epsilon_grows_and_survives_restart(ledger_path):
    # Prepare
    first = PrivacyLedger(ledger_path)
    before = _record(first, [(1.0, 0.01, 100)] * 3)

    # Execute: a new ledger object on the same file (a restarted site daemon) continues
    restarted = PrivacyLedger(ledger_path)
    resumed_at = restarted.cumulative_epsilon(1e-5)
    after = _record(restarted, [(1.0, 0.01, 100)] * 2, first_round=4)

    # Assert
    cumulative = [row.epsilon_cumulative for row in before + after]
    assert all(a < b for a, b in zip(cumulative, cumulative[1:], strict=False))
    assert resumed_at == pytest.approx(before[-1].epsilon_cumulative)
    assert len(restarted.rows()) == 5
    assert restarted.cumulative_epsilon(1e-5) == pytest.approx(after[-1].epsilon_cumulative)


def test_second_run_restarts_run_epsilon_but_not_cumulative(ledger_path):
    # Prepare
    ledger = PrivacyLedger(ledger_path)
    run_a = _record(ledger, [(1.0, 0.01, 100)] * 3, run_id="a")

    # Execute
    run_b = _record(ledger, [(1.0, 0.01, 100)] * 2, run_id="b")

    # Assert
    assert run_b[0].epsilon_run == pytest.approx(run_a[0].epsilon_run)  # same first round, fresh run
    assert run_b[0].epsilon_run < run_b[0].epsilon_cumulative
    assert run_b[0].epsilon_cumulative > run_a[-1].epsilon_cumulative
    assert ledger.run_epsilon("a", 1e-5) == pytest.approx(run_a[-1].epsilon_run)
    assert ledger.run_epsilon("b", 1e-5) == pytest.approx(run_b[-1].epsilon_run)
    assert ledger.run_epsilon("never-ran", 1e-5) == 0.0


@pytest.mark.parametrize("case", ["steady", "mixed-noise", "small-eps", "high-rate"])
def test_rdp_epsilon_agrees_with_dp_accounting(ledger_path, case):
    # Prepare
    rounds, delta = CASES[case]

    # Execute
    rows = _record(PrivacyLedger(ledger_path, accountant="rdp"), rounds, delta=delta)
    expected = _dp_accounting_epsilon(rounds, delta, accountant="rdp")

    # Assert
    assert rows[-1].epsilon_cumulative == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("case", ["mixed-noise", "small-eps"])
def test_prv_epsilon_agrees_with_dp_accounting_pld(ledger_path, case):
    # Prepare
    rounds, delta = CASES[case]

    # Execute
    rows = _record(PrivacyLedger(ledger_path, accountant="prv"), rounds, delta=delta)
    expected = _dp_accounting_epsilon(rounds, delta, accountant="pld")

    # Assert
    assert rows[-1].accountant == "prv"
    assert rows[-1].epsilon_cumulative == pytest.approx(expected, rel=0.01, abs=PRV_EPS_ERROR)


def test_rows_hold_the_audit_fields(ledger_path):
    # Prepare
    start = datetime.now().astimezone()
    _record(PrivacyLedger(ledger_path), [(1.0, 0.01, 100)], run_id="run-7", delta=1e-6)

    # Execute
    raw = json.loads(ledger_path.read_text().splitlines()[0])

    # Assert
    assert set(raw) == ROW_KEYS
    assert (raw["run_id"], raw["round"], raw["steps"], raw["delta"], raw["accountant"]) == ("run-7", 1, 100, 1e-6, "rdp")
    stamp = datetime.fromisoformat(raw["timestamp"])
    assert stamp.utcoffset() == timedelta(0) and stamp >= start - timedelta(seconds=1)
    assert LedgerRow.from_dict(raw) == PrivacyLedger(ledger_path).rows()[0]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_load_accountant_rebuilds_opacus_state(ledger_path, accountant):
    # Prepare
    ledger = PrivacyLedger(ledger_path, accountant=accountant)
    _record(ledger, [(1.0, 0.01, 100), (1.0, 0.01, 100), (2.0, 0.01, 30)])

    # Execute
    acc = PrivacyLedger(ledger_path, accountant=accountant).load_accountant()

    # Assert: Opacus' own history (equal settings composed), and the same epsilon
    assert acc.mechanism() == accountant
    assert acc.history == [(1.0, 0.01, 200), (2.0, 0.01, 30)]
    assert acc.get_epsilon(delta=1e-5) == pytest.approx(ledger.cumulative_epsilon(1e-5))


def test_projection_writes_nothing_and_matches_the_next_round(ledger_path):
    # Prepare
    ledger = PrivacyLedger(ledger_path)
    _record(ledger, [(1.0, 0.01, 100)])
    content = ledger_path.read_bytes()

    # Execute
    projected = ledger.projected_epsilon(noise_multiplier=1.5, sample_rate=0.02, steps=50, delta=1e-5)
    unchanged = ledger_path.read_bytes() == content
    row = ledger.record_round(run_id="run-1", round=2, noise_multiplier=1.5, sample_rate=0.02, steps=50, delta=1e-5)

    # Assert
    assert unchanged
    assert projected == pytest.approx(row.epsilon_cumulative)


def test_empty_ledger_has_spent_nothing(ledger_path):
    # Prepare
    ledger = PrivacyLedger(ledger_path)

    # Execute / Assert
    assert ledger.rows() == []
    assert ledger.cumulative_epsilon(1e-5) == 0.0
    assert not ledger_path.exists()


@pytest.mark.parametrize(
    "tail",
    [
        b'{"run_id": "run-1", "round": 2, "noise_mul',  # crash mid-write
        b"\x00" * 64,  # zero-filled block after a power cut
        b"not json at all\n",
        b'{"run_id": "run-1"}\n',  # JSON, but not a row
    ],
)
def test_corrupt_trailing_line_is_skipped_then_moved_aside(ledger_path, tail, caplog):
    # Prepare
    ledger = PrivacyLedger(ledger_path)
    good = _record(ledger, [(1.0, 0.01, 100)])
    with open(ledger_path, "ab") as f:
        f.write(tail)

    # Execute
    with caplog.at_level(logging.WARNING, logger="client.training.privacy.ledger"):
        rows = PrivacyLedger(ledger_path).rows()
    warned = caplog.text
    row = PrivacyLedger(ledger_path).record_round(run_id="run-1", round=2, noise_multiplier=1.0, sample_rate=0.01,
                                                  steps=100, delta=1e-5)

    # Assert
    assert rows == good
    assert "incomplete" in warned and str(ledger_path) not in warned
    assert [r.round for r in PrivacyLedger(ledger_path).rows()] == [1, 2]
    assert ledger_path.with_name(ledger_path.name + ".corrupt").read_bytes().rstrip(b"\n") == tail.rstrip(b"\n")
    assert row.epsilon_cumulative > good[0].epsilon_cumulative


def test_last_row_without_newline_is_kept(ledger_path):
    # Prepare: the crash cut only the final newline
    ledger = PrivacyLedger(ledger_path)
    _record(ledger, [(1.0, 0.01, 100)])
    ledger_path.write_bytes(ledger_path.read_bytes().rstrip(b"\n"))
    ledger_path.with_name(ledger_path.name + ".accountant.json").unlink()

    # Execute
    _record(PrivacyLedger(ledger_path), [(1.0, 0.01, 100)], first_round=2)

    # Assert
    assert [r.round for r in PrivacyLedger(ledger_path).rows()] == [1, 2]


def _break_middle(path):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"{garbage\n" + b"".join(lines[1:]))


def _truncate(path):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))


def _alter(path):
    path.write_bytes(path.read_bytes().replace(b'"noise_multiplier": 1.0', b'"noise_multiplier": 9.0', 1))


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [(_break_middle, "line 2 is corrupt"), (_truncate, "truncated"), (_alter, "altered")],
)
def test_broken_audit_trail_is_an_error(ledger_path, damage, fragment):
    # Prepare
    _record(PrivacyLedger(ledger_path), [(1.0, 0.01, 100)] * 2)
    damage(ledger_path)
    ledger = PrivacyLedger(ledger_path)

    # Execute
    with pytest.raises(LedgerCorruptError) as info:
        ledger.cumulative_epsilon(1e-5)
    with pytest.raises(LedgerCorruptError):
        ledger.record_round(run_id="run-1", round=3, noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-5)

    # Assert: the ledger is named by its token, never its path
    message = str(info.value)
    assert fragment in message
    assert file_token(ledger_path) in message and str(ledger_path.parent) not in message


def test_accountant_state_behind_the_rows_is_caught_up(ledger_path, caplog):
    # Prepare: crash after the row was appended, before the accountant state was replaced
    ledger = PrivacyLedger(ledger_path)
    _record(ledger, [(1.0, 0.01, 100)])
    sidecar = ledger_path.with_name(ledger_path.name + ".accountant.json")
    old_state = sidecar.read_bytes()
    _record(ledger, [(1.0, 0.01, 100)], first_round=2)
    sidecar.write_bytes(old_state)

    # Execute
    with caplog.at_level(logging.WARNING, logger="client.training.privacy.ledger"):
        acc = PrivacyLedger(ledger_path).load_accountant()

    # Assert
    assert acc.history == [(1.0, 0.01, 200)]
    assert "behind" in caplog.text


@pytest.mark.parametrize(
    "overrides",
    [
        {"noise_multiplier": 0.0},
        {"noise_multiplier": float("nan")},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"steps": 2.0},
        {"delta": 0.0},
        {"delta": 1.0},
        {"run_id": ""},
        {"round": -1},
    ],
)
def test_record_round_rejects_values_that_are_not_a_dp_round(ledger_path, overrides):
    # Prepare
    kwargs = {"run_id": "run-1", "round": 1, "noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 10,
              "delta": 1e-5} | overrides

    # Execute / Assert
    with pytest.raises(InvalidInputError):
        PrivacyLedger(ledger_path).record_round(**kwargs)
    assert not ledger_path.exists() or PrivacyLedger(ledger_path).rows() == []


def test_unknown_accountant_is_a_config_error(ledger_path):
    # Execute / Assert
    with pytest.raises(ConfigError, match="accountant"):
        PrivacyLedger(ledger_path, accountant="gdp")


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ("{not json", None),  # unreadable: rebuilt from the rows, with a warning
        ("tampered", LedgerCorruptError),  # covers every row but holds another history
    ],
)
def test_accountant_state_is_checked_against_the_rows(ledger_path, state, error):
    # Prepare
    _record(PrivacyLedger(ledger_path), [(1.0, 0.01, 100)] * 2)
    sidecar = ledger_path.with_name(ledger_path.name + ".accountant.json")
    if state == "tampered":
        data = json.loads(sidecar.read_text())
        data["state"]["history"] = [[5.0, 0.01, 200]]
        state = json.dumps(data)
    sidecar.write_text(state)
    ledger = PrivacyLedger(ledger_path)

    # Execute / Assert
    if error is None:
        assert ledger.load_accountant().history == [(1.0, 0.01, 200)]
    else:
        with pytest.raises(error, match="does not match"):
            ledger.load_accountant()
