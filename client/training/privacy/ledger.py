"""A site's privacy ledger: every DP round it ever trained, across runs and restarts.

The ledger is an append-only JSON-lines file, one row per round (see :class:`LedgerRow`).
The rows are the audit trail and the source of truth: their ``(noise_multiplier,
sample_rate, steps)`` are exactly the history an Opacus accountant keeps, so the
accountant is rebuilt from them with its own ``load_state_dict``.

Beside the ledger, ``<ledger>.accountant.json`` holds the accountant's ``state_dict()``
with the length and SHA-256 of the ledger bytes it covers, written atomically after every
row. It is a tamper and truncation check: a ledger shorter than, or different from, what
its accountant state covered is an error (epsilon would be under-counted), never a reset.

Crash safety: a row is appended with one write and fsync'd. A corrupt *last* line (a
crash mid-write) is skipped with a warning, and moved to ``<ledger>.corrupt`` before the
next row is appended; a corrupt line *before* a valid row means the audit trail is broken
and raises :class:`LedgerCorruptError`. Writers on one machine are serialised with an
advisory ``flock`` where the OS has one.

Messages name the ledger by :func:`common.redact.file_token`, never by its path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.training.privacy.rows import LedgerRow, check_round_values, compose_history
from common.errors import ImplantFLError
from common.privacy_plan import HistoryEntry, check_accountant, history_epsilon, make_accountant
from common.redact import file_token

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = "implantfl-accountant/1"


class LedgerCorruptError(ImplantFLError):
    """The privacy ledger cannot be trusted (a corrupt row mid-file, truncation, tampering)."""


@dataclass(frozen=True)
class _Scan:
    rows: list[LedgerRow]
    good_end: int  # byte offset just past the last valid row (and its newline, if any)
    content: bytes  # the whole file as read
    corrupt_tail: bool  # a corrupt last line follows good_end


class PrivacyLedger:
    """Append-only record of a site's DP rounds, and the accountant rebuilt from it.

    Parameters
    ----------
    path
        The ledger file (JSON lines). Created, with its folder, on the first record.
    accountant
        ``"rdp"`` (default) or ``"prv"``: computes the epsilons of new rows and of the
        queries below unless a query names another one. Rows are accountant-agnostic.
    """

    def __init__(self, path: Path, *, accountant: str = "rdp") -> None:
        self.path = Path(path)
        self.accountant = check_accountant(accountant)
        self.token = file_token(self.path)

    @property
    def sidecar_path(self) -> Path:
        """Where the accountant's ``state_dict`` is kept."""
        return self.path.with_name(self.path.name + ".accountant.json")

    @property
    def quarantine_path(self) -> Path:
        """Where corrupt trailing bytes are moved before the next row is appended."""
        return self.path.with_name(self.path.name + ".corrupt")

    def __repr__(self) -> str:
        return f"PrivacyLedger({self.token}, accountant={self.accountant!r})"

    # ------------------------------------------------------------------ reading
    def _scan(self, content: bytes) -> _Scan:
        rows: list[LedgerRow] = []
        good_end, offset, bad_line = 0, 0, 0
        lines = content.split(b"\n")
        for number, line in enumerate(lines, start=1):
            end = offset + len(line) + (1 if number < len(lines) else 0)
            if line.strip():
                try:
                    row = LedgerRow.from_dict(json.loads(line.decode("utf-8")))
                except (ValueError, TypeError, UnicodeDecodeError) as e:
                    if bad_line:
                        break  # a second corrupt line: reported below
                    bad_line = number
                    logger.debug("ledger %s line %d unreadable: %s", self.token, number, type(e).__name__)
                else:
                    if bad_line:
                        break
                    rows.append(row)
                    good_end = end
            elif not bad_line:
                good_end = end
            offset = end
        else:
            if bad_line:
                logger.warning("privacy ledger %s: last line %d is incomplete (interrupted write?) and is ignored",
                               self.token, bad_line)
            return _Scan(rows=rows, good_end=good_end, content=content, corrupt_tail=bool(bad_line))
        raise LedgerCorruptError(
            f"privacy ledger {self.token}: line {bad_line} is corrupt and is not the last line; the audit trail "
            "is broken, so this site refuses to train until the ledger is restored from a backup"
        )

    def _read_sidecar(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.sidecar_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("accountant state of ledger %s unreadable (%s); rebuilding from the ledger rows",
                           self.token, type(e).__name__)
            return None
        if not (isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT
                and isinstance(data.get("ledger_bytes"), int) and isinstance(data.get("ledger_sha256"), str)
                and isinstance(data.get("state"), dict) and isinstance(data["state"].get("history"), list)):
            logger.warning("accountant state of ledger %s has an unknown layout; rebuilding from the ledger rows",
                           self.token)
            return None
        return data

    def _verify(self, scan: _Scan) -> dict[str, Any] | None:
        """Return the accountant state; raise if the ledger is shorter than, or differs from, what it covered."""
        side = self._read_sidecar()
        if side is None:
            if scan.rows:
                logger.info("ledger %s has no accountant state yet; using its rows", self.token)
            return None
        covered = side["ledger_bytes"]
        if covered > scan.good_end:
            raise LedgerCorruptError(
                f"privacy ledger {self.token} holds fewer rounds than its accountant state recorded; the audit "
                "trail was truncated, so this site refuses to train until the ledger is restored from a backup"
            )
        if hashlib.sha256(scan.content[:covered]).hexdigest() != side["ledger_sha256"]:
            raise LedgerCorruptError(
                f"privacy ledger {self.token} differs from what its accountant state recorded; the audit trail "
                "was altered, so this site refuses to train until the ledger is restored from a backup"
            )
        if covered < scan.good_end:
            logger.warning("accountant state of ledger %s is behind its rows (interrupted write?); using the rows",
                           self.token)
        return side

    def _load(self) -> tuple[_Scan, dict[str, Any] | None]:
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            content = b""
        scan = self._scan(content)
        return scan, self._verify(scan)

    def rows(self) -> list[LedgerRow]:
        """Return every valid row, oldest first (a corrupt last line is skipped)."""
        return self._load()[0].rows

    def load_accountant(self, *, accountant: str | None = None) -> IAccountant:
        """Return an Opacus accountant holding every round this site has trained.

        Loaded with the accountant's ``load_state_dict``: from the verified accountant
        state beside the ledger when it covers all rows, else rebuilt from the rows.

        Parameters
        ----------
        accountant
            ``"rdp"`` or ``"prv"``; default: the ledger's.
        """
        name = check_accountant(accountant or self.accountant)
        scan, side = self._load()
        history = compose_history(scan.rows)
        if side is None or side["ledger_bytes"] != scan.good_end:
            return make_accountant(name, history)  # no state, or behind: the rows are the truth
        try:
            stored = [(float(nm), float(q), int(steps)) for nm, q, steps in side["state"]["history"]]
        except (TypeError, ValueError):
            stored = None
        if stored != history:
            raise LedgerCorruptError(
                f"privacy ledger {self.token}: accountant state does not match the ledger rows; refusing to "
                "train until the ledger is restored from a backup"
            )
        return make_accountant(name, stored)

    # ------------------------------------------------------------------ epsilon
    def cumulative_epsilon(self, delta: float, *, accountant: str | None = None) -> float:
        """Epsilon spent at this site over every run, at ``delta``; 0.0 before the first round."""
        return history_epsilon(compose_history(self.rows()), delta=delta, accountant=accountant or self.accountant)

    def run_epsilon(self, run_id: str, delta: float, *, accountant: str | None = None) -> float:
        """Epsilon spent by the run ``run_id`` alone, at ``delta``; 0.0 if it has no rows."""
        rows = [row for row in self.rows() if row.run_id == run_id]
        return history_epsilon(compose_history(rows), delta=delta, accountant=accountant or self.accountant)

    def projected_epsilon(
        self, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str | None = None
    ) -> float:
        """Cumulative epsilon this site WOULD have after one more round; writes nothing."""
        check_round_values(run_id="projection", round=0, noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                           steps=steps, delta=delta)
        history = compose_history(self.rows(), [(float(noise_multiplier), float(sample_rate), int(steps))])
        return history_epsilon(history, delta=delta, accountant=accountant or self.accountant)

    # ------------------------------------------------------------------ writing
    @contextmanager
    def _locked(self) -> Iterator[int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - no flock on this OS: single writer assumed
                logger.debug("no flock on this platform; ledger writers are not serialised")
            if created:
                _fsync_dir(self.path.parent)
            yield fd
        finally:
            os.close(fd)  # releases the flock

    def _quarantine(self, fd: int, scan: _Scan) -> None:
        tail = scan.content[scan.good_end:]
        with open(self.quarantine_path, "ab") as out:
            out.write(tail + (b"" if tail.endswith(b"\n") else b"\n"))
            out.flush()
            os.fsync(out.fileno())
        os.ftruncate(fd, scan.good_end)
        os.fsync(fd)
        logger.warning("privacy ledger %s: moved an incomplete last line (%d bytes) aside before appending",
                       self.token, len(tail))

    def _write_sidecar(self, history: list[HistoryEntry], content: bytes) -> None:
        state = make_accountant(self.accountant, history).state_dict()
        data = {
            "format": SIDECAR_FORMAT,
            "state": {"history": [list(entry) for entry in state["history"]], "mechanism": state["mechanism"]},
            "ledger_bytes": len(content),
            "ledger_sha256": hashlib.sha256(content).hexdigest(),
        }
        tmp = self.sidecar_path.with_name(self.sidecar_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.sidecar_path)
        _fsync_dir(self.path.parent)

    def record_round(
        self, *, run_id: str, round: int, noise_multiplier: float, sample_rate: float, steps: int, delta: float
    ) -> LedgerRow:
        """Append one trained DP round and return its row (with both epsilons).

        The row is written and fsync'd even if computing an epsilon fails (the privacy
        was spent): its epsilons are then ``inf``, which exhausts any budget.

        Raises
        ------
        InvalidInputError
            If the values cannot describe a DP round (noise <= 0, sample rate outside
            (0, 1], steps < 1, ...).
        LedgerCorruptError
            If the existing ledger cannot be trusted.
        """
        check_round_values(run_id=run_id, round=round, noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                           steps=steps, delta=delta)
        entry: HistoryEntry = (float(noise_multiplier), float(sample_rate), int(steps))
        with self._locked() as fd:
            with open(self.path, "rb") as f:
                scan = self._scan(f.read())
            self._verify(scan)
            if scan.corrupt_tail:
                self._quarantine(fd, scan)
            all_history = compose_history(scan.rows, [entry])
            run_history = compose_history([r for r in scan.rows if r.run_id == run_id], [entry])
            try:
                eps_cum = history_epsilon(all_history, delta=delta, accountant=self.accountant)
                eps_run = history_epsilon(run_history, delta=delta, accountant=self.accountant)
            except Exception:  # noqa: BLE001 - the round was trained: record it whatever happens
                logger.exception("privacy ledger %s: epsilon computation failed; recording the round as inf",
                                 self.token)
                eps_cum = eps_run = math.inf
            row = LedgerRow(
                run_id=run_id, round=round, noise_multiplier=entry[0], sample_rate=entry[1], steps=entry[2],
                delta=float(delta), accountant=self.accountant, epsilon_run=float(eps_run),
                epsilon_cumulative=float(eps_cum), timestamp=datetime.now(UTC).isoformat(timespec="milliseconds"),
            )
            line = json.dumps(row.to_dict(), sort_keys=False).encode("utf-8") + b"\n"
            prefix = scan.content[:scan.good_end]
            if prefix and not prefix.endswith(b"\n"):
                line = b"\n" + line  # the last row was written without its newline
            _write_all(fd, line)
            os.fsync(fd)
            self._write_sidecar(all_history, prefix + line)
        logger.info("privacy ledger %s: round %d recorded, epsilon of the run %.3f, of the site %.3f",
                    self.token, round, row.epsilon_run, row.epsilon_cumulative)
        return row


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
