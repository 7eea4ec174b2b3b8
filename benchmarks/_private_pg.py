"""A throwaway PostgreSQL cluster of a benchmark's own (``--private-pg``).

The machine's shared server also serves other work (tests, other benchmarks): its
backends' CPU would be counted with the benchmark's, and their load would slow it. A
private cluster (``initdb`` into a temporary directory, ``pg_ctl start`` on a free port,
PostgreSQL's default settings, so ``fsync`` and ``synchronous_commit`` on) holds only
the benchmark's own databases; its postmaster's process tree is the benchmark's
server CPU. Run as root, the cluster runs as the ``postgres`` user (``runuser``), as
``.ci/run`` does.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from busbell._ports import free_port

__all__ = ["private_postgres"]


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"--private-pg: no {name} (install the postgresql package)")
    return path


@contextlib.contextmanager
def private_postgres() -> Iterator[int]:
    """Start a private cluster; set ``BUSBELL_TEST_PG_HOST``/``PORT`` to it; yield its port.

    The cluster is stopped (``immediate``) and its directory removed on exit, and the
    environment restored.
    """
    workdir = Path(tempfile.mkdtemp(prefix="busbell-bench-pg-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    data, port = workdir / "data", free_port()
    saved = {k: os.environ.get(k) for k in ("BUSBELL_TEST_PG_HOST", "BUSBELL_TEST_PG_PORT")}
    started = False
    try:
        subprocess.run(  # noqa: S603 - fixed programs, our own arguments
            [*as_pg, _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            cwd=workdir,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {workdir}"
        log = str(workdir / "log")
        subprocess.run(  # noqa: S603
            [*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-l", log, "-w", "-o", opts, "start"],
            cwd=workdir,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        started = True
        os.environ["BUSBELL_TEST_PG_HOST"] = "127.0.0.1"
        os.environ["BUSBELL_TEST_PG_PORT"] = str(port)
        yield port
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if started:
            subprocess.run(  # noqa: S603
                [*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                cwd=workdir,
                check=False,
                stdout=subprocess.DEVNULL,
            )
        shutil.rmtree(workdir, ignore_errors=True)
