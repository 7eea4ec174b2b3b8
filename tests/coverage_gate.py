"""Coverage gate on the sans-I/O cores: each core module's branch coverage against a floor.

``pytest --core-coverage`` (the README's test command) measures only these modules (so the
rest of the suite runs at full speed), prints their figures at the end and fails the
run when a core falls below its floor or was not measured at all. Floors sit just under
what the suite measures, so that a change which leaves a core's new branches untested
fails; raise a floor when coverage rises, never lower one to make a change pass. A run of
a few test files alone will miss floors: use the flag on the whole suite. Under pytest-xdist
the workers' data is combined before the floors are applied (tests/conftest.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parents[1]

# module file -> floor (branch coverage, %); the cores STYLE.md asks to keep near 100 %
FLOORS: dict[str, float] = {
    "busbell/_canonical.py": 100.0,
    "busbell/_token.py": 100.0,
    "busbell/_echo.py": 100.0,
    "busbell/_fare_event.py": 97.0,
    "busbell/_bells.py": 99.0,
    "busbell/_trace.py": 97.0,
    "busbell/_topics.py": 97.0,
    "edge/_classifier.py": 95.0,
    "edge/_vehicle.py": 94.0,
    "edge/_bells.py": 99.0,
    "edge/_bells_table.py": 100.0,
    "edge/_bells_record.py": 100.0,
    "backend/_chain.py": 98.0,
    "backend/_record_check.py": 100.0,
    "backend/_fare_engine.py": 97.0,
    "backend/_fare_rules.py": 97.0,
    "backend/_journeys.py": 92.0,
    "backend/_legs.py": 97.0,
    "backend/_overlaps.py": 95.0,
    "backend/_journey_explain.py": 97.0,
    "backend/_waits.py": 95.0,
    "firmware_sim/_radio.py": 97.0,
}


class CoreCoverage:
    """Branch coverage of the :data:`FLOORS` modules only, for one pytest session.

    In one process: :meth:`start`, :meth:`stop`, :meth:`report`. Under pytest-xdist each
    worker measures into ``measure_to`` (``start``, ``stop``) and the controller, which runs
    no test, merges the workers' files into ``data_file`` (:meth:`combine`).
    """

    def __init__(self, data_file: Path, measure_to: Path | None = None) -> None:
        self.files = {rel: (ROOT / rel).resolve() for rel in FLOORS}
        self.data_file = data_file
        self.cov = self._coverage(measure_to or data_file)

    def _coverage(self, data_file: Path) -> coverage.Coverage:
        return coverage.Coverage(
            data_file=str(data_file),
            branch=True,
            include=[str(p) for p in self.files.values()],
            config_file=False,
        )

    def start(self) -> None:
        """Start measuring (before the test modules import the cores)."""
        self.cov.start()

    def stop(self) -> None:
        """Stop measuring and save the data."""
        self.cov.stop()
        self.cov.save()

    def combine(self, workers_dir: Path) -> tuple[list[str], list[str]]:
        """Merge the workers' data files in ``workers_dir`` into ``data_file``; :meth:`report`."""
        self.data_file.unlink(missing_ok=True)
        self.cov = self._coverage(self.data_file)
        self.cov.combine([str(workers_dir)], strict=True, keep=False)
        self.cov.save()
        return self.report()

    def report(self) -> tuple[list[str], list[str]]:
        """The figures of the saved data: (report lines, failures)."""
        measured = {Path(f).resolve() for f in self.cov.get_data().measured_files()}
        lines: list[str] = []
        failures: list[str] = []
        for rel, floor in sorted(FLOORS.items()):
            path = self.files[rel]
            if path not in measured:
                failures.append(f"{rel}: not measured (no test in this run imported it)")
                continue
            percent = self.cov.report(include=[str(path)], file=io.StringIO())
            ok = percent >= floor
            mark = "" if ok else " BELOW"
            lines.append(f"{rel:28} {percent:6.1f} % (floor {floor:.0f} %){mark}")
            if not ok:
                failures.append(f"{rel}: {percent:.1f} % < floor {floor:.0f} %")
        return lines, failures
