"""A process that has imported the node service once and forks one ``mipflow node serve`` per request.

:func:`tests.nodes.running_nodes` starts about a hundred federations in a test run; a fresh
``python -m mipflow.cli node serve`` spends about a second of CPU importing the service (FastAPI,
pandas, SQLAlchemy, the algorithms) before it reads its home.  This script imports those modules
once, then, for each line ``{"argv", "env", "cwd", "log"}`` on its standard input, forks a child
that runs ``mipflow.cli.main(argv)`` exactly as ``python -m mipflow.cli`` would (the request's
environment and working directory, standard output and error to ``log``, standard input from
``/dev/null``) and answers the child's pid on its standard output.  Nothing is opened before the
fork (no node home, store or socket): each child reads its home and serves as a new process does.

It ends when its standard input closes (the test process that started it ended).  It reaps its
children on ``SIGCHLD`` (the handler restored to the default in each child); the test process
watches them through a pidfd.
"""
from __future__ import annotations

import json
import os
import signal
import sys


def _child(request: dict) -> None:
    """In the forked child: become ``python -m mipflow.cli ARGV`` and never return."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        # PYTHONUNBUFFERED=1, as the spawned node had
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")
        sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.path[0] = request["cwd"]
        import mipflow.cli

        sys.argv = [mipflow.cli.__file__, *request["argv"]]
        try:
            code = mipflow.cli.main(request["argv"])
        except SystemExit as exc:  # as the interpreter turns one into an exit status
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        import atexit

        atexit._run_exitfuncs()  # what the interpreter runs on a normal exit
    except BaseException:  # noqa: BLE001 - reported in the node's log, as an uncaught error would be
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _reap(signum: int, frame: object) -> None:
    """Reap ended children (their CPU time counts as this process's children's, as a spawned node's did)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> None:
    # sys.path as ``python -m`` has it: the working directory first, not this script's folder (whose
    # tests/mipflow package would hide mipflow)
    sys.path[0] = os.getcwd()
    import mipflow.cli  # noqa: F401 - the service's imports, done once
    import mipflow.node.api.app  # noqa: F401
    import mipflow.node.api.step  # noqa: F401
    import mipflow.node.api.tls  # noqa: F401
    import uvicorn  # noqa: F401

    signal.signal(signal.SIGCHLD, _reap)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        out.write(f"{pid}\n")
        out.flush()


if __name__ == "__main__":
    main()
