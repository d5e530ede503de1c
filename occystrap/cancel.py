"""Stopping a run promptly on Ctrl-C, with worker threads in the middle of transfers.

Python delivers SIGINT to the main thread only, as a KeyboardInterrupt; worker threads carry
on, and both `ThreadPoolExecutor.__exit__` and interpreter exit wait for them (a slow layer
used to hold a Ctrl-C for 96 s). So an interrupt also:

- cancels the run's `Cancellation` (each run carries its own in its `RunContext`, so one
  run's interrupt never stops another in the same process), which transfer loops check
  between chunks (`check`) and sleeps wait on (`sleep`), so no new work starts and backoffs
  end at once;
- shuts down the socket of every body being streamed (`watch`), waking a thread blocked
  in `recv` on a trickling server at once, and every connection the run's transport opened
  (`connection_trace`), waking a thread blocked in `send` to a registry that stopped reading;
- lets `cancellable_pool` (or `shutdown_pool`) stop waiting for its own workers (never other
  threads of the process) after a short grace, so the main thread unwinds (removing
  temporary files and partial outputs) within a second or two;
- and `exit_now` ends the process without waiting for any thread still stuck.

A second Ctrl-C exits at once. SIGTERM (a `kill`, a CI timeout, `docker stop`) is treated the
same way, exiting 143.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

# Installing the interrupt handler is all `occystrap --version` does here: sockets, pools
# and httpx (only named in types) load when a run uses them.
if TYPE_CHECKING:
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import httpx

# How long an interrupted pool, and the process at exit, wait for workers to notice.
GRACE_SECONDS = 1.0


class Cancelled(Exception):  # noqa: N818 - names what happened, like KeyboardInterrupt
    """Raised in a worker thread whose run was interrupted; the main thread reports it."""


class Cancellation:
    """One run's stop signal, carried by its `RunContext` (and given to its chain, registry
    clients, prefetch threads and pools): cancelling it stops that run only, so two runs in
    one process (a library caller's, a Dask worker's several tasks) never stop each other."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._abort_actions: dict[int, Callable[[], None]] = {}
        self._connections: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise `Cancelled` if the run was interrupted: call between chunks and before
        retries."""
        if self._event.is_set():
            raise Cancelled("interrupted")

    def sleep(self, seconds: float) -> None:
        """`time.sleep` that ends early, raising `Cancelled`, when the run is interrupted."""
        if self._event.wait(seconds):
            raise Cancelled("interrupted")

    def cancel(self) -> None:
        """Interrupt the run: flag it and cut every transfer it watches."""
        self._event.set()
        with self._lock:
            actions = list(self._abort_actions.values())
            connections = list(self._connections)
        for action in actions:
            with contextlib.suppress(OSError):
                action()
        for sock in connections:
            _shut_down(sock)

    def watch(self, response: httpx.Response) -> None:
        """Until `unwatch(response)`, cancelling shuts down the socket streaming its body.

        `socket.shutdown` (not close) is what wakes another thread blocked on the socket; the
        base method is called so that a TLS socket's state is left to the reading thread.
        """
        import socket

        sock = _socket_of(response)
        if sock is not None:
            with self._lock:
                self._abort_actions[id(response)] = lambda: socket.socket.shutdown(
                    sock, socket.SHUT_RDWR
                )
        if self._event.is_set():  # cancelled while connecting: `cancel` missed this one
            self.cancel()

    def unwatch(self, response: httpx.Response) -> None:
        with self._lock:
            self._abort_actions.pop(id(response), None)

    def connection_trace(self, inner: Trace | None) -> Trace:
        """An httpcore `trace` extension (calling `inner` too) that has cancelling shut down
        every connection the request opens, for as long as it lives: an upload blocked in
        `send` (its request still being written, so no response to `watch`) wakes at once."""

        def trace(event: str, info: dict[str, Any]) -> None:
            if event == "connection.connect_tcp.complete":
                stream = info.get("return_value")
                sock = stream.get_extra_info("socket") if stream is not None else None
                if sock is not None:
                    with self._lock:
                        self._connections.add(sock)
                    if self._event.is_set():  # cancelled while connecting
                        _shut_down(sock)
            if inner is not None:
                inner(event, info)

        return trace


# httpcore's trace extension: called with each event's name and details.
Trace = Callable[[str, dict[str, Any]], None]


def _shut_down(sock: socket.socket) -> None:
    import socket

    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _socket_of(response: httpx.Response) -> socket.socket | None:
    import socket

    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    sock = stream.get_extra_info("socket")
    return sock if isinstance(sock, socket.socket) else None


def worker_pool(max_workers: int, thread_name_prefix: str) -> ThreadPoolExecutor:
    """A ThreadPoolExecutor that knows its own threads (`workers`), so that an interrupted
    run waits for them (`shutdown_pool`), not for every thread of the process (another
    run's, a library caller's)."""
    from concurrent.futures import ThreadPoolExecutor

    class WorkerPool(ThreadPoolExecutor):
        workers: set[threading.Thread]

    workers: set[threading.Thread] = set()
    pool = WorkerPool(
        max_workers=max_workers,
        thread_name_prefix=thread_name_prefix,
        initializer=lambda: workers.add(threading.current_thread()),
    )
    pool.workers = workers
    return pool


@contextlib.contextmanager
def cancellable_pool(
    cancellation: Cancellation, max_workers: int, thread_name_prefix: str
) -> Iterator[ThreadPoolExecutor]:
    """A `worker_pool` of the run `cancellation` stops that, when its block is left by an
    interrupt (or any error), starts nothing more, and waits for its running workers only
    `GRACE_SECONDS` if interrupted."""
    pool = worker_pool(max_workers, thread_name_prefix)
    try:
        yield pool
    except BaseException as error:
        # A library caller's own Ctrl-C, without our signal handler: cancel this run.
        if isinstance(error, KeyboardInterrupt):
            cancellation.cancel()
        shutdown_pool(pool, cancellation)
        raise
    pool.shutdown(wait=True)


def shutdown_pool(pool: ThreadPoolExecutor, cancellation: Cancellation) -> None:
    """Shut `pool` (a `worker_pool`) down after a failure: nothing queued starts; its running
    workers are waited for, but only `GRACE_SECONDS` when the run was interrupted."""
    if not cancellation.is_set():
        pool.shutdown(wait=True, cancel_futures=True)
        return
    pool.shutdown(wait=False, cancel_futures=True)
    _join_workers(getattr(pool, "workers", ()), time.monotonic() + GRACE_SECONDS)


def _join_workers(threads: Iterable[threading.Thread], deadline: float) -> bool:
    """Wait until `deadline` for `threads` (the current one excepted); True if all ended."""
    waited = [thread for thread in threads if thread is not threading.current_thread()]
    for thread in waited:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in waited)


def _other_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if not thread.daemon]


class _Interrupts:
    """The run the CLI started (signals belong to the process, so to the one command it
    runs) and the signal that stopped it: the exit status is 128 plus its number."""

    run = Cancellation()
    stopped_by = signal.SIGINT


def stopped_status() -> int:
    """130 after Ctrl-C (or a library interrupt), 143 after SIGTERM."""
    return 128 + _Interrupts.stopped_by


def stopped_message() -> str:
    return "interrupted" if _Interrupts.stopped_by == signal.SIGINT else "terminated"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _Interrupts.run.is_set():  # a second signal: no more waiting for anything
        sys.stderr.write(f"occystrap: error: {stopped_message()}\n")
        sys.stderr.flush()
        os._exit(stopped_status())
    _Interrupts.stopped_by = signal.Signals(signum)
    _Interrupts.run.cancel()
    raise KeyboardInterrupt


def install_interrupt_handler() -> Cancellation:
    """Make Ctrl-C and SIGTERM cancel the run the CLI is starting, removing partial outputs
    and temporary files (signals need the main thread); returns that run's cancellation."""
    _Interrupts.run = Cancellation()
    _Interrupts.stopped_by = signal.SIGINT
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
    return _Interrupts.run


def exit_now(status: int) -> None:
    """Exit with `status`, giving worker threads a short grace but never waiting on them."""
    if not _join_workers(_other_threads(), time.monotonic() + GRACE_SECONDS):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
