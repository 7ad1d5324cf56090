"""Where the blocks of a block-wise prediction run: local threads or a dask.distributed cluster.

A runner takes the job once (`prepare`), runs block tasks (`submit`), cancels the rest on Stop
or an error, and frees what it built (`close`). `run_tasks` submits a list of tasks and polls
them, so Stop is honoured within a fraction of a second, handing each result over as it comes.
`RESOURCES` holds, per process, the predictor and open output arrays of the job being run.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..data import Image
from ..errors import TowerError

# Images pickled to cluster workers larger than this are refused: they would be copied to every worker.
_MAX_SHIPPED_BYTES = 16 * 2**20
_POLL_S = 0.05

RESOURCES: dict[str, tuple[Any, ...]] = {}
RESOURCES_LOCK = threading.Lock()


def forget(token: str) -> None:
    with RESOURCES_LOCK:
        RESOURCES.pop(token, None)


class PredictionStopped(TowerError):
    """Stop was pressed (or Ctrl-C): the finished blocks are kept for a resume."""


class LocalRunner:
    """Blocks on a thread pool in this process."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="napari-tower-block")

    def prepare(self, job: Any) -> Any:
        return job

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def cancel(self, futures: list[Any]) -> None:
        for f in futures:
            f.cancel()

    def close(self, token: str) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class ClusterRunner:
    """Blocks on a dask.distributed cluster; the job (model, image reference) is sent once to each worker."""

    def __init__(self, scheduler: Any) -> None:
        try:
            import distributed
        except ImportError:
            raise TowerError(
                "predicting on a dask cluster needs dask.distributed: pip install 'napari-tower[distributed]'"
            ) from None
        if isinstance(scheduler, distributed.Client):
            self.client, self.own = scheduler, False
        else:
            try:  # waits up to dask's distributed.comm.timeouts.connect (30 s by default)
                self.client, self.own = distributed.Client(scheduler), True
            except (OSError, TimeoutError, ValueError) as exc:
                raise TowerError(
                    f"could not connect to the dask scheduler at {scheduler} ({type(exc).__name__}): check the address "
                    "(e.g. tcp://host:8786) and that `dask scheduler` and its workers are running"
                ) from None

    def prepare(self, job: Any) -> Any:
        return self.client.scatter(job, broadcast=True, hash=False)

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def cancel(self, futures: list[Any]) -> None:
        self.client.cancel(futures)

    def close(self, token: str) -> None:
        try:
            self.client.run(forget, token)
        except Exception:  # noqa: BLE001 - a lost worker keeps a stale model until its next job; nothing to report
            pass
        finally:
            if self.own:
                self.client.close()


def run_tasks(runner: Any, fn: Callable, job_ref: Any, tasks: list[tuple], progress: Callable[[], None],
              should_stop: Callable[[], bool] | None,
              on_result: Callable[[int, Any], None] = lambda i, value: None) -> None:
    """Submit every task, poll for completion (so Stop is honoured within a fraction of a second).

    `on_result(i, value)` runs in this thread as each task finishes (the block journal records it); the value is
    then dropped with its future, so what the tasks return (a block's seam faces) is not held until the end.
    """
    futures: list[Any] = [runner.submit(fn, job_ref, *args) for args in tasks]
    pending = set(range(len(futures)))
    try:
        while pending:
            if should_stop is not None and should_stop():
                raise PredictionStopped("prediction stopped")
            finished = [i for i in pending if futures[i].done()]
            if not finished:
                time.sleep(_POLL_S)
                continue
            for i in sorted(finished):
                value = futures[i].result()
                futures[i] = None
                pending.discard(i)
                on_result(i, value)
                del value
                progress()
    except BaseException:
        runner.cancel([futures[i] for i in pending])
        raise


def check_shippable(image: Image) -> None:
    try:
        size = len(pickle.dumps(image.data, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - anything that does not pickle cannot go to a worker
        size = -1
    if not 0 <= size <= _MAX_SHIPPED_BYTES:
        raise TowerError(
            f"{image.source} cannot be sent to the cluster's workers (it is held in this process's memory or an "
            "open file): save it as zarr on storage the workers share and predict that path"
        )
