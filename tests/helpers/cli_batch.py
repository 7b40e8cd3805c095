"""Run the real `hs2` entry point (`hs2trl.cli:main`, the console script) many times, fast.

Each CLI process spends seconds importing torch/transformers/TRL before it reads a single row, so a table of
bad-input cases costs minutes as separate processes. Here one driver process imports hs2trl and the stage modules
once, then forks one child per command line: the child's stdout/stderr go to their own files, it runs
`hs2trl.cli.main()` with that `sys.argv`, and its exit status is what the shell would see (an uncaught exception
prints its traceback and exits 1, as Python does). Everything after the imports is the real CLI code path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

DRIVER = r"""
import importlib, json, os, pkgutil, sys, traceback
import hs2trl.cli, hs2trl.stages
for m in pkgutil.iter_modules(hs2trl.stages.__path__):   # the heavy imports, once
    try:
        importlib.import_module("hs2trl.stages." + m.name)
    except Exception:
        pass
jobs = json.load(open(sys.argv[1]))
results = []
for i, argv in enumerate(jobs):
    out, err = sys.argv[1] + f".{i}.out", sys.argv[1] + f".{i}.err"
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fo, fe = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fo, 1); os.dup2(fe, 2)
            sys.argv = ["hs2", *argv]
            try:
                hs2trl.cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append([os.waitstatus_to_exitcode(status), open(out).read(), open(err).read()])
print(json.dumps(results))
"""  # noqa: E501 (the driver script's line, inside the string)


def run_cli_batch(commands: list[list[str]], timeout: int = 600, env: dict | None = None,
                  cwd: str | None = None) -> list[subprocess.CompletedProcess]:
    """One CompletedProcess per command line (args after `hs2`), in order, run from `cwd` (default: this one)."""
    with tempfile.TemporaryDirectory() as d:
        jobs = os.path.join(d, "jobs.json")
        with open(jobs, "w") as f:
            json.dump(commands, f)
        proc = subprocess.run([sys.executable, "-c", DRIVER, jobs], capture_output=True, text=True, timeout=timeout,
                              env=env or {**os.environ}, cwd=cwd)
        if proc.returncode != 0:
            raise RuntimeError(f"cli batch driver failed:\n{proc.stderr[-3000:]}")
        results = json.loads(proc.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess(["hs2", *argv], code, out, err)
            for argv, (code, out, err) in zip(commands, results)]
