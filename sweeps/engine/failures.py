"""Which failures of a trial a retry can cure: the one classification every launcher uses.

Infrastructure failures are retried, up to the spec's `max_failures` per trial (3 by default): a lost node or
worker process and a preemption, which Tune (one-worker trials) and Ray Train (DDP trials) see as a dead actor
and never reach the trial's code, and, raised inside it, a transient network or storage error (a connection
refused or reset, a timeout, a stale NFS handle, a DDP peer that vanished, a Ray object or actor lost).

Everything else is deterministic: a config, data or training error (non-finite loss), a programming error
(`ValueError`, `TypeError`, ...), a missing file, a full disk (`OSError(ENOSPC)`), an unknown error. Another
attempt would repeat it on the same config, so it ends the trial at once (`sweeps.engine.worker.final_report`):
FAILED in MLflow with `mixer.error`, FAIL in Optuna, never retried. An unknown error counts as deterministic
because a needless retry costs a GPU allocation each time, and a missed one a `mixer sweep resume`.

Ray Train V2 (2.60) retries every worker error alike: its `FailureConfig` counts failures (and preemptions
apart) and its failure policy is internal, with no per-error-type hook. So Ray Train retries none
(`max_failures=0`, preemptions aside): a DDP trial's process reads the failed workers' errors
(`WorkerGroupError.worker_failures`) and ends the trial on a deterministic one, else Tune retries it. A
one-worker trial decides in its worker: a deterministic error ends the training function with a last report.
"""

from __future__ import annotations

import errno
import sys

# OSError numbers of a network or storage that may answer on the next try; ENOSPC, ENOENT, EACCES are not.
TRANSIENT_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
    errno.EHOSTDOWN, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.ESTALE, errno.EAGAIN,
})
# Ray's errors of a lost process, node or object (a user's exception inside a task is a RayTaskError instead).
_RAY_SYSTEM_ERRORS = (
    "RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError",
    "ObjectLostError", "OwnerDiedError", "ObjectFetchTimedOutError", "RaySystemError", "GetTimeoutError",
)


# Ray Train's reports of a worker it lost (a process killed or hung, a peer that never reached a collective), by
# class name: Ray Train V2 keeps them in a private module.
_RAY_TRAIN_LOST_WORKER = frozenset({
    "WorkerHealthCheckFailedError", "WorkerHealthCheckTimeoutError", "CollectiveTimeoutError",
})


def is_infrastructure(error: BaseException) -> bool:
    """Whether `error` is an infrastructure failure, worth retrying the trial for; False for every
    deterministic error (the module docstring lists both)."""
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
        return True
    if isinstance(error, (ConnectionError, TimeoutError)):  # raised without an errno too
        return True
    if any(cls.__name__ in _RAY_TRAIN_LOST_WORKER for cls in type(error).__mro__):
        return True
    return _is_ray_system_error(error) or _is_lost_peer(error) or _is_http_unreachable(error)


def _is_ray_system_error(error: BaseException) -> bool:
    ray_exceptions = sys.modules.get("ray.exceptions")
    errors = tuple(getattr(ray_exceptions, name) for name in _RAY_SYSTEM_ERRORS if hasattr(ray_exceptions, name))
    return bool(errors) and isinstance(error, errors)


def _is_lost_peer(error: BaseException) -> bool:
    """A collective that failed because a DDP peer (or the rendezvous store) went away."""
    distributed = sys.modules.get("torch.distributed")
    dist_error = getattr(distributed, "DistError", None)  # DistNetworkError, DistStoreError, DistBackendError
    return dist_error is not None and isinstance(error, dist_error)


def _is_http_unreachable(error: BaseException) -> bool:
    """A storage or tracking server that did not answer (requests raises OSErrors without an errno)."""
    requests_exceptions = sys.modules.get("requests.exceptions")
    if requests_exceptions is None:
        return False
    return isinstance(error, (requests_exceptions.ConnectionError, requests_exceptions.Timeout))
