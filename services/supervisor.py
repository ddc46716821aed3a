"""`chive-backfill up`: three processes on the one log and the one data dir: the API, the
record projector (with fullReindex, which rebuilds its index), and the workers of the other five
types (which read the projector's index).

Why apart: in one process the API shares an event loop, and a core, with whatever the workers
are doing, and its answers wait behind a page being decoded or a batch being folded; and one
Python process uses one core however many the machine has, so a scan would decode its repos and
fold their records into the index in turn. Apart, the API answers from its own core however
busy the work is, and the projector folds one batch while the workers decode the next; the log
(the SQLite file, or Kafka) is how they talk, as it is between any two replicas.

It fails as one service does: when one process ends, the others are stopped and `up` exits
non-zero with that process's reason as its last line. SIGINT or SIGTERM stop them all, cleanly.
The children die with `up` even when it is killed outright (SIGKILL): each asks the kernel to
kill it when its parent goes (PR_SET_PDEATHSIG), so nothing is left holding the port or the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

# name -> (the `chive-backfill` command that runs it, its niceness). The work runs at a lower
# CPU priority: on a machine it saturates, the API's answers do not queue behind it.
ROLES = {"api": (("api",), 0), "projector": (("projector",), 10), "workers": (("workers",), 10)}
STATUS_PORT_ENV = "CHIVE_STATUS_PORT"
SUPERVISOR_ENV = "CHIVE_SUPERVISOR_PID"
NICENESS_ENV = "CHIVE_SUPERVISED_NICENESS"
# How long a child has to stop after SIGTERM before it is killed.
STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


async def supervise(stop: asyncio.Event) -> None:
    """Run the roles until `stop` (then stop them, and return) or until one ends (then stop
    the rest, and raise SystemExit with its reason)."""
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    children: dict[str, asyncio.subprocess.Process] = {}
    reasons: dict[str, str] = {}
    relays: list[asyncio.Task] = []
    try:
        for name, (args, niceness) in ROLES.items():
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                *args,
                env={**_role_env(env, name), NICENESS_ENV: str(niceness)},
                stderr=asyncio.subprocess.PIPE,
            )
            children[name] = child
            relays.append(asyncio.create_task(_relay(child, name, reasons)))
            log.info("started the %s process (pid %s)", name, child.pid)
        waits = {asyncio.create_task(c.wait()): name for name, c in children.items()}
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*waits, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        ended = [waits[t] for t in done if t is not stopping]
    finally:
        await _stop_all(children)
        await asyncio.gather(*relays, return_exceptions=True)
    if ended and not stop.is_set():
        name = ended[0]
        code = children[name].returncode
        reason = reasons.get(name) or f"exited with status {code}"
        raise SystemExit(f"{reason} (the {name} process of `up`)")


def die_with_supervisor() -> None:
    """In a child of `up`: take the niceness `up` gave, and be killed when `up` goes, however
    it goes."""
    expected = os.environ.get(SUPERVISOR_ENV)
    if expected is None:
        return
    os.nice(int(os.environ.get(NICENESS_ENV, "0")))
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(expected):  # `up` went before the request was made
        os._exit(1)


def _role_env(env: dict[str, str], role: str) -> dict[str, str]:
    """Two processes serve status endpoints: the workers on CHIVE_STATUS_PORT, the projector on
    the port after it (the API serves its own on CHIVE_PORT)."""
    port = env.get(STATUS_PORT_ENV)
    if role == "api" or not port:
        return {k: v for k, v in env.items() if k != STATUS_PORT_ENV}
    if role == "projector" and port.isdigit() and int(port) > 0:
        return {**env, STATUS_PORT_ENV: str(int(port) + 1)}
    return env


async def _relay(child: asyncio.subprocess.Process, name: str, reasons: dict[str, str]) -> None:
    """The child's stderr, line by line, to ours; its last `chive-backfill: ` line (a fatal
    error's reason) remembered."""
    assert child.stderr is not None
    while line := await child.stderr.readline():
        text = line.decode(errors="replace")
        if text.startswith("chive-backfill: "):
            reasons[name] = text.removeprefix("chive-backfill: ").strip()
        sys.stderr.write(text)
        sys.stderr.flush()


async def _stop_all(children: dict[str, asyncio.subprocess.Process]) -> None:
    running = [c for c in children.values() if c.returncode is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
    if not running:
        return
    _, late = await asyncio.wait(
        [asyncio.create_task(c.wait()) for c in running], timeout=STOP_GRACE_S
    )
    if late:
        for child in running:
            if child.returncode is None:
                log.error("pid %s did not stop within %.0f s: killed", child.pid, STOP_GRACE_S)
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
        await asyncio.gather(*(c.wait() for c in running))
