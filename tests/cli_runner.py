"""Many runs of the real ``train.py``, paying the interpreter's and the imports' start-up once.

``run_many`` starts one Python process (this file, with the environment a ``python train.py``
subprocess would get) that imports what ``train.py`` imports at the top, then forks a child per
run: the child changes to the run's folder, sends its stdout and stderr (file descriptors 1 and
2) to files, sets ``sys.argv`` and runs ``train.py`` as ``__main__``. It ends as the interpreter
would: the ``sys.exit`` status (a message instead of a number: printed to stderr, status 1), or
an uncaught exception's traceback on stderr and status 1; then the exit handlers run and the
output is flushed. Each run gets its own fresh fork, so nothing one run does reaches another.
The parent imports modules only (no torch operation, no thread pool) before forking.

For what start-up and exit themselves do (signals, DDP, multiruns, W&B), run the real thing:
``conftest.run_train``.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train.py"


def run_many(
    runs: list[tuple[list[str], Path]],
    env: dict[str, str | None] | None = None,
    parallel: int = 2,
    timeout: float = 300,
) -> list[subprocess.CompletedProcess]:
    """``python train.py <args>`` in ``cwd`` for each ``(args, cwd)`` of ``runs``, ``parallel``
    at a time, as ``subprocess.run(..., capture_output=True, text=True)`` would report them.
    ``env`` is added to ``os.environ`` (None unsets a variable); a run taking longer than
    ``timeout`` seconds is killed (status -9)."""
    full_env = {**os.environ}
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    with tempfile.TemporaryDirectory(prefix="cli_runner_") as folder:
        logs = Path(folder)
        jobs = [
            {
                "argv": [str(TRAIN), *args],
                "cwd": str(cwd),
                "stdout": str(logs / f"{index}.out"),
                "stderr": str(logs / f"{index}.err"),
            }
            for index, (args, cwd) in enumerate(runs)
        ]
        spec = logs / "spec.json"
        spec.write_text(json.dumps({"jobs": jobs, "parallel": parallel, "timeout": timeout}))
        runner = subprocess.run(
            [sys.executable, __file__, str(spec)],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout * len(runs) + 120,
        )
        if runner.returncode != 0:
            raise RuntimeError(f"cli_runner failed ({runner.returncode}):\n{runner.stderr}")
        codes = json.loads((logs / "codes.json").read_text())
        return [
            subprocess.CompletedProcess(
                [sys.executable, *job["argv"]],
                code,
                Path(job["stdout"]).read_text(),
                Path(job["stderr"]).read_text(),
            )
            for job, code in zip(jobs, codes, strict=True)
        ]


def _exit_status(code: object) -> int:
    """The process status of ``sys.exit(code)``, printing a message as the interpreter does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _child(job: dict) -> NoReturn:
    status = 1
    try:
        os.chdir(job["cwd"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = list(job["argv"])
        try:
            runpy.run_path(job["argv"][0], run_name="__main__")
            status = 0
        except SystemExit as stop:
            status = _exit_status(stop.code)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            status = 1
        # The interpreter's shutdown: wait for non-daemon threads, then the exit handlers.
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(status)


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    # sys.path as for `python train.py`: its folder first, not this one.
    sys.path[0] = str(TRAIN.parent)
    # What train.py imports at the top (the slow part of its start-up); nothing runs yet.
    import hydra  # noqa: F401
    import omegaconf  # noqa: F401

    import lit_gp.jobs  # noqa: F401
    import lit_gp.training  # noqa: F401

    pending = list(enumerate(spec["jobs"]))
    running: dict[int, tuple[int, float]] = {}
    codes: dict[int, int] = {}
    while pending or running:
        while pending and len(running) < spec["parallel"]:
            index, job = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(job)
            running[pid] = (index, time.monotonic() + spec["timeout"])
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for child, (index, deadline) in running.items():
                if time.monotonic() > deadline:
                    os.kill(child, signal.SIGKILL)
                    running[child] = (index, float("inf"))
                    with open(spec["jobs"][index]["stderr"], "a") as err:
                        err.write(f"\ncli_runner: killed after {spec['timeout']} s\n")
            time.sleep(0.05)
            continue
        index, _ = running.pop(pid)
        codes[index] = os.waitstatus_to_exitcode(status)
    Path(spec_file).with_name("codes.json").write_text(
        json.dumps([codes[index] for index in range(len(spec["jobs"]))])
    )


if __name__ == "__main__":
    main(sys.argv[1])
