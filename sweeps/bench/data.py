"""`mixer data bench`: images/s of a training input pipeline, and the peak memory of the processes running it.

Three pipelines do the same work (decode, augment, batch) on the same images:
- `stream`: a Parquet source through `sweeps.stream` (Ray Data; `--processes` decoding tasks on a local Ray of
  that many CPUs);
- `memory`: an in-memory source through `mixer_core`'s DataLoader (`--processes` workers, 0 for none);
- `torchvision`: the reference, torchvision's `ImageFolder` + `RandomResizedCrop` + `RandomHorizontalFlip` +
  `DataLoader` with `--processes` workers, on an image folder.

Timing starts after `warmup` batches (Ray's start, worker start-up); memory is weighed over as many batches again
after the timed ones (see `TreeWatch`). `img_per_sec_per_core` is images per CPU-second used by the whole process
tree while timed (this process, Ray's daemons and workers, or the DataLoader's workers; each process's own time,
sampled every 0.2 s, see `TreeWatch`), so machines shared with other work still compare pipelines fairly;
`cores_busy` is those CPU-seconds per second, and `processes_started` the processes the tree started meanwhile (a
Ray worker process costs about 1 s of CPU to start). `peak_rss_mb` is the largest sum of resident memory over this
process and all its descendants (Ray's raylet, object store and workers, or the DataLoader's workers), sampled
every 0.2 s; `peak_pss_mb` the same with shared memory counted once, every 1 s while memory is weighed.

The loading processes are the Ray workers seen running a decoding task (Ray titles a busy worker
`ray::<task name>`) or the DataLoader's workers. `loading_at_once` is the most seen decoding at one sample (the
DataLoader's workers all count while alive), `peak_pss_mb_per_loading_process` the largest PSS of any one of
them, `peak_own_pss_mb_per_loading_process` the same less its share of shared memory (Ray's object store, a
fixed pool whose pages each process keeps once touched, or the DataLoader's batches in flight), and
`loading_processes_with_torch` how many have torch's library mapped.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mixer_core.config import DataConfig, EvalConfig
from mixer_core.data.decode import DecodeBatch

SAMPLE_SECONDS = 0.2
OBJECT_STORE_BUFFERS = 4
PSS_EVERY = 5


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _tree(root: int) -> list[int]:
    tree, pending, pids = _children(), [root], []
    while pending:
        pids.append(pending.pop())
        pending.extend(tree.get(pids[-1], []))
    return pids


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: fields[11:13] are its own user and system time in clock ticks,
    fields[19] its start time."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def decoding_task(pid: int) -> bool:
    """Whether `pid` is a Ray worker running a decoding task now (alone or fused with other operators)."""
    title = _cmdline(pid)
    return title.startswith(b"ray::") and DecodeBatch.__name__.encode() in title


def dataloader_worker(pid: int) -> bool:
    """Whether `pid` is one of this process's DataLoader workers (forked: a child with this command line)."""
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return parent == os.getpid() and _cmdline(pid) == _cmdline(parent)


def maps_torch(pid: int) -> bool:
    """Whether `pid` has torch's C++ library mapped (it imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def _proc_kb(pid: int, file: str, field: str) -> int:
    """A kB line of /proc/PID/FILE (`status`, `smaps_rollup`); 0 when absent."""
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _pss_kb(pid: int) -> int:
    return _proc_kb(pid, "smaps_rollup", "Pss:")


def _pss_without_shared_memory_kb(pid: int) -> int:
    return _pss_kb(pid) - _proc_kb(pid, "smaps_rollup", "Pss_Shmem:")


def _memory_mb(pids: list[int], read: Callable[[int], int]) -> float:
    """`read(pid)` (kB) summed over `pids` that still live, in MB (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            total += read(pid)
        except OSError:
            continue
    return total / 1024


def _holds(test: Callable[[int], bool], pid: int) -> bool:
    try:
        return test(pid)
    except (OSError, IndexError):  # the process ended while being looked at
        return False


class TreeWatch:
    """Samples this process's tree in a thread while in use, every `SAMPLE_SECONDS`:
    - CPU: each process's own user + system time as last seen, summed over every process seen, less the watch's
      own (`cpu_seconds`). Reading the tree only at both ends of a measurement would lose every process that ended
      in between: Ray's raylet ignores SIGCHLD, so the workers it ends never reach its count of reaped children. A
      process that ends loses at most its last `SAMPLE_SECONDS` here. `processes_started` counts those first seen
      since `mark()`.
    - memory: RSS (its sum counts shared memory, such as Ray's object store, once per process that maps it), and,
      once `weigh()` is called, every `PSS_EVERY` samples PSS, which shares it out so that its sum is the real
      total. Reading PSS walks every page table: about 0.25 s of CPU per sample with Ray's object store mapped in
      each process, so it is read apart from the timing, whose cores it would take. Processes for which
      `loading(pid)` holds at a sample are the loading processes; their PSS is kept apart."""

    def __init__(self, loading: Callable[[int], bool]):
        self.loading = loading

    def __enter__(self) -> TreeWatch:
        self.peak_rss_mb, self.peak_pss_mb, self._stop = 0.0, 0.0, threading.Event()
        self.loading_at_once, self.loader_pss_mb, self.loaders_with_torch = 0, {}, set()
        self.loader_own_pss_mb: dict[int, float] = {}
        self._cpu_ticks: dict[tuple[int, str], int] = {}  # (pid, start time) → own CPU ticks when last seen
        self._seen_at_mark: set[tuple[int, str]] = set()
        self._own_seconds, self._reads_pss = 0.0, False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _record_cpu(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                fields = _stat_fields(pid)
            except (OSError, IndexError):
                continue
            self._cpu_ticks[(pid, fields[19])] = int(fields[11]) + int(fields[12])

    def cpu_seconds(self) -> float:
        """CPU seconds used by the tree since this watch started, sampled now, less the watch's own."""
        with self._lock:
            started = time.thread_time()
            self._record_cpu(_tree(os.getpid()))
            self._own_seconds += time.thread_time() - started
            return sum(self._cpu_ticks.values()) / os.sysconf("SC_CLK_TCK") - self._own_seconds

    def weigh(self) -> None:
        """Read PSS from now on (see the class docstring)."""
        self._reads_pss = True

    def mark(self) -> None:
        """Start counting `processes_started` from now."""
        with self._lock:
            self._record_cpu(_tree(os.getpid()))
            self._seen_at_mark = set(self._cpu_ticks)

    @property
    def processes_started(self) -> int:
        return len(self._cpu_ticks.keys() - self._seen_at_mark)

    def _record(self, with_pss: bool) -> None:
        pids = _tree(os.getpid())
        self._record_cpu(pids)
        self.peak_rss_mb = max(self.peak_rss_mb, _memory_mb(pids, lambda pid: _proc_kb(pid, "status", "VmRSS:")))
        loading = [pid for pid in pids if _holds(self.loading, pid)]
        self.loading_at_once = max(self.loading_at_once, len(loading))
        for pid in loading:
            self.loader_pss_mb.setdefault(pid, 0.0)
        if not with_pss:
            return
        self.peak_pss_mb = max(self.peak_pss_mb, _memory_mb(pids, _pss_kb))
        for pid, peak in self.loader_pss_mb.items():
            try:
                self.loader_pss_mb[pid] = max(peak, _pss_kb(pid) / 1024)
                own = _pss_without_shared_memory_kb(pid) / 1024
                self.loader_own_pss_mb[pid] = max(self.loader_own_pss_mb.get(pid, 0.0), own)
                if maps_torch(pid):
                    self.loaders_with_torch.add(pid)
            except OSError:
                continue

    def _sample(self) -> None:
        for count in itertools.count():
            with self._lock:
                started = time.thread_time()
                self._record(with_pss=self._reads_pss and count % PSS_EVERY == 0)
                self._own_seconds += time.thread_time() - started
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._record(with_pss=True)


def _timed(batches: Iterator, count: int, warmup: int, watch: TreeWatch) -> tuple[int, float, float]:
    """(images, seconds, CPU seconds of the process tree) over `count` batches after `warmup` ones."""
    for _ in range(warmup):
        next(batches)
    watch.mark()
    started, cpu_started, images = time.perf_counter(), watch.cpu_seconds(), 0
    for batch in itertools.islice(batches, count):
        images += len(batch[0] if isinstance(batch, (list, tuple)) else batch["label"])
    return images, time.perf_counter() - started, watch.cpu_seconds() - cpu_started


def _forever(epochs: Iterable[Iterable]) -> Iterator:
    """Every epoch's batches in turn; `close()` closes the epoch in progress (the stream's Ray Data executor stops
    then, not from its own threads after Ray has shut down, which ends the process with status 1)."""
    for epoch in epochs:
        yield from epoch


def _stream_batches(cfg: DataConfig, processes: int, batch_size: int) -> Iterator:
    import ray

    from sweeps.engine.ray_session import start_local_ray
    from sweeps.stream import open_stream

    if not ray.is_initialized():
        # A local Ray of `processes` CPUs whose object store holds four of the stream's buffers, not Ray's default
        # of 30% of the machine: the store's pages are reused instead of each being touched once (RSS counts
        # every page a process has touched in it). Besides the buffer, the store holds the consumer's shuffle
        # buffer and prefetched blocks and the tasks' outputs in flight: with two buffers, two decoding processes
        # spilled to disk (Ray's spill and restore workers, 25% fewer images/s).
        start_local_ray(processes, object_store_memory=OBJECT_STORE_BUFFERS * cfg.loader_buffer_mb * 2**20)
    cfg = cfg.model_copy(update={"loader_processes": processes, "batch_size": batch_size})
    stream = open_stream(cfg, EvalConfig(max_examples=1, fewshot_pretraining=False), seed=0, rank=0, world_size=1)
    return _forever(stream.epoch_batches(epoch) for epoch in itertools.count())


def _memory_batches(cfg: DataConfig, processes: int, batch_size: int) -> Iterator:
    from mixer_core.data import build_splits, make_loader

    splits = build_splits(cfg)
    loader = make_loader(splits.train, batch_size, shuffle=True, seed=0, num_workers=processes, drop_last=True)
    return _forever(loader for _ in itertools.count())


def _torchvision_batches(cfg: DataConfig, processes: int, batch_size: int) -> Iterator:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(cfg.image_size),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])
    folder = datasets.ImageFolder(cfg.path, transform=transform)
    loader = DataLoader(folder, batch_size=batch_size, shuffle=True, num_workers=processes, drop_last=True,
                        persistent_workers=processes > 0)
    return _forever(loader for _ in itertools.count())


PIPELINES = {"stream": _stream_batches, "memory": _memory_batches, "torchvision": _torchvision_batches}
LOADING_PROCESSES = {"stream": decoding_task, "memory": dataloader_worker, "torchvision": dataloader_worker}


def bench_loader(cfg: DataConfig, pipeline: str, processes: int, batch_size: int, batches: int, warmup: int) -> dict:
    """Throughput and peak memory of one pipeline (see the module docstring) as a JSON-ready dict."""
    with TreeWatch(LOADING_PROCESSES[pipeline]) as watch:
        stream = PIPELINES[pipeline](cfg, processes, batch_size)
        try:
            images, seconds, cpu_seconds = _timed(stream, batches, warmup, watch)
            processes_started = watch.processes_started
            watch.weigh()
            for _ in itertools.islice(stream, batches):  # as many again for memory
                pass
        finally:
            stream.close()
    return {
        "pipeline": pipeline,
        "path": cfg.path,
        "image_size": cfg.image_size,
        "augment": cfg.augment.model_dump(),
        "processes": processes,
        "batch_size": batch_size,
        "images": images,
        "seconds": seconds,
        "img_per_sec": images / seconds,
        "cpu_seconds": cpu_seconds,
        "img_per_sec_per_core": images / max(cpu_seconds, 1e-9),
        "cores_busy": cpu_seconds / seconds,
        "peak_rss_mb": watch.peak_rss_mb,
        "peak_pss_mb": watch.peak_pss_mb,
        "loading_processes_seen": len(watch.loader_pss_mb),
        "loading_at_once": watch.loading_at_once,
        "peak_pss_mb_per_loading_process": max(watch.loader_pss_mb.values(), default=0.0),
        "peak_own_pss_mb_per_loading_process": max(watch.loader_own_pss_mb.values(), default=0.0),
        "loading_processes_with_torch": len(watch.loaders_with_torch),
        "processes_started": processes_started,
    }
