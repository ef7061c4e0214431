"""One sweep, one driver: a sweep name is held by at most one `mixer sweep run` or `resume` at a time.

The hold is a lock row in the MLflow store that every driver already shares: an experiment named
`mixer-driver: <sweep name>`. MLflow refuses a second experiment of one name (a unique column in its database;
the server answers RESOURCE_ALREADY_EXISTS), so creating it is the atomic step: of two drivers that start one
name at once, one creates it and the other is refused. The experiment's tags say who holds it: the driver's
host, process id and sweep id, and a heartbeat, the time the driver's heartbeat thread last wrote (every
`HEARTBEAT_SECONDS`). A driver that ends, however it ends short of being killed, renames the experiment to a
name of its own and deletes it, which frees the name.

A killed driver (SIGKILL, a lost head node) leaves its lock behind; the next driver decides whether the holder
is alive. On the holder's own host that is certain: its process id runs or not (a reused id is caught by the
heartbeat). From another host it is the heartbeat: one older than `STALE_SECONDS` means the driver is gone. In
between, a heartbeat still fresh from a driver that has just died elsewhere, `--force` (`force=True`) says the
person knows it is gone; it never overrides a driver seen running on this host. A lock taken over is renamed
away by its experiment id, so of two drivers taking over at once, one renames it and both then race to create
the name afresh: one wins.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from sweeps.engine.sweep_runs import SweepConflict
from sweeps.tracking.schema import DRIVER_LOCK_PREFIX, TAG_DRIVER_HEARTBEAT, TAG_DRIVER_HOST, TAG_DRIVER_PID, TAG_SWEEP_ID
from sweeps.tracking.store import RetryingMlflowClient, best_effort

HEARTBEAT_SECONDS = 15.0
STALE_SECONDS = 4 * HEARTBEAT_SECONDS  # three heartbeats missed: the driver is gone (or cut off from the store)
_TAKEOVER_ATTEMPTS = 3


@dataclass(frozen=True)
class Holder:
    """The driver that holds a sweep name, as its lock's tags say."""

    host: str
    pid: int
    sweep_id: str
    heartbeat: float  # Unix seconds

    @classmethod
    def of(cls, tags: dict[str, str]) -> Holder:
        """The holder that `tags` (a lock experiment's) describe; a lock without them reads as long gone."""
        return cls(tags.get(TAG_DRIVER_HOST, "?"), int(tags.get(TAG_DRIVER_PID, 0)), tags.get(TAG_SWEEP_ID, "?"),
                   float(tags.get(TAG_DRIVER_HEARTBEAT, 0)))

    def runs_here(self) -> bool:
        """Whether this holder's process is seen running on this host."""
        return self.host == socket.gethostname() and _process_exists(self.pid)

    def alive(self) -> bool:
        """Whether the holder still drives its sweep: a fresh heartbeat, and a running process if on this host."""
        fresh = time.time() - self.heartbeat < STALE_SECONDS
        return fresh and (self.host != socket.gethostname() or _process_exists(self.pid))

    def describe(self) -> str:
        """`sweep id abcd1234, driver pid 123 on host h, heartbeat 4 s ago` (for messages)."""
        return (f"sweep id {self.sweep_id}, driver pid {self.pid} on host {self.host},"
                f" heartbeat {time.time() - self.heartbeat:.0f} s ago")


@contextmanager
def driving(uri: str, name: str, sweep_id: str, *, force: bool = False) -> Iterator[None]:
    """Hold sweep name `name` for this process while the block runs (heartbeat included); raises `SweepConflict`
    naming the driver that holds it while that driver is alive (`force`: unless it is seen running here)."""
    client = RetryingMlflowClient(uri)
    lock_id = _acquire(client, name, sweep_id, force)
    stop = threading.Event()
    heartbeat = threading.Thread(target=_beat, args=(client, lock_id, stop), name="mixer-driver-heartbeat", daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join()
        best_effort(f"the release of sweep name {name}", _free, client, lock_id, DRIVER_LOCK_PREFIX + name)


def _acquire(client: RetryingMlflowClient, name: str, sweep_id: str, force: bool) -> str:
    """The id of the lock experiment this driver created for `name`, taking over one whose driver is gone."""
    lock_name = DRIVER_LOCK_PREFIX + name
    for _ in range(_TAKEOVER_ATTEMPTS):
        try:
            return client.create_experiment(lock_name, tags=_my_tags(sweep_id))
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        held = client.get_experiment_by_name(lock_name)
        if held is None:  # released since
            continue
        holder = Holder.of(held.tags)
        if holder.runs_here() or (holder.alive() and not force):
            hint = "" if holder.runs_here() else "; if you know that driver is gone, take over with --force"
            raise SweepConflict(f"sweep {name} has a live driver ({holder.describe()}): wait for it or stop it{hint}")
        _free(client, held.experiment_id, lock_name)
    raise SweepConflict(f"sweep {name}: another driver took it at the same moment; try again")


def _my_tags(sweep_id: str) -> dict[str, str]:
    return {TAG_DRIVER_HOST: socket.gethostname(), TAG_DRIVER_PID: str(os.getpid()), TAG_SWEEP_ID: sweep_id,
            TAG_DRIVER_HEARTBEAT: f"{time.time():.3f}"}


def _beat(client: RetryingMlflowClient, lock_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        best_effort("the sweep driver's heartbeat", client.set_experiment_tag, lock_id, TAG_DRIVER_HEARTBEAT,
                    f"{time.time():.3f}")


def _free(client: RetryingMlflowClient, lock_id: str, lock_name: str) -> None:
    """Give the lock's name back: rename the experiment to a name only it has, then delete it. A lock another
    driver renamed or deleted first is left as that driver left it."""
    experiment = client.get_experiment(lock_id)
    if experiment.lifecycle_stage != "active":
        return
    try:
        if experiment.name == lock_name:
            client.rename_experiment(lock_id, f"{lock_name} (released, {lock_id})")
        client.delete_experiment(lock_id)
    except MlflowException as error:
        if error.error_code not in ("INVALID_STATE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            raise


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
