"""`mixer sweep validate|run|resume|ls|bench`: plan, run and inspect sweeps.

Spec errors, a sweep name no sweep has (`resume`) and an MLflow store that does not answer exit with status 2
before Ray starts; so does a sweep whose driver is alive (`run`, `resume`). Progress goes to stderr; results to
stdout (a table, or one JSON document with `--json`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mixer_cli.output import EXIT_INTERRUPTED, add_json_flag, emit_json, refuse
from mixer_core import metrics
from mixer_core.config_messages import shown
from mixer_core.redact import redacted
from sweeps.spec import MAX_NAME_CHARS, SWEEP_NAME_PATTERN, SpecError, load_spec
from sweeps.tables import format_table
from sweeps.tracking.reach import StoreUnreachable, create_sqlite_tables, require_reachable, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `validate`, `run`, `resume`, `ls` and `bench` subcommands."""
    subparsers = parser.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND", required=True)

    validate = subparsers.add_parser("validate", help="check a spec and print its plan without starting Ray")
    _add_spec_arguments(validate)
    validate.set_defaults(run_sweep_command=validate_command)

    run = subparsers.add_parser("run", help="run a sweep (local Ray, or the cluster at --address / RAY_ADDRESS)")
    _add_spec_arguments(run)
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start Ray locally)")
    run.set_defaults(run_sweep_command=run_command)

    resume = subparsers.add_parser("resume", help="finish a sweep whose driver died; finished trials are kept")
    resume.add_argument("name", help="the sweep's id, or its name (the spec's `name`; its latest run)")
    resume.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start Ray locally)")
    resume.add_argument("--force", action="store_true",
                        help="take over from a driver you know is gone though its heartbeat is still fresh")
    add_json_flag(resume)
    resume.set_defaults(run_sweep_command=resume_command)

    list_parser = subparsers.add_parser("ls", help="list the sweeps in the MLflow store and their trials' states")
    add_json_flag(list_parser)
    list_parser.set_defaults(run_sweep_command=ls_command)

    bench = subparsers.add_parser(
        "bench", help="engine efficiency: K trials through Ray Tune/Train vs. the same training run directly"
    )
    _add_spec_arguments(bench)
    bench.add_argument(
        "--trials", type=int, default=4,
        help="number of identical trials K (default 4: an even K puts as many direct trials after the engine as before)",
    )
    bench.set_defaults(run_sweep_command=bench_command)


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, help="sweep spec (YAML)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a spec key, e.g. --set base.train.epochs=2 (repeatable)",
    )
    add_json_flag(parser)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the sweep subcommand; a bad spec, or an MLflow store that does not answer, is exit status 2."""
    try:
        return args.run_sweep_command(args)
    except (SpecError, StoreUnreachable) as error:
        return refuse(f"sweep {args.sweep_command}", error)


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _reachable_store() -> str:
    """The MLflow tracking URI, once its store answers (`StoreUnreachable` within seconds otherwise)."""
    uri = tracking_uri()
    require_reachable(uri)
    return uri


def validate_command(args: argparse.Namespace) -> int:
    """Print the expanded plan: trials, axes, parameters and GMACs per variant, total training FLOPs."""
    from sweeps.inputs import check_inputs
    from sweeps.plan import format_plan, memory_problems, plan_sweep

    spec = load_spec(args.spec, args.overrides)
    _warn(check_inputs(spec, files_here=False))  # before the plan builds the models; `run` knows where files are read
    plan = plan_sweep(spec)
    if args.json:
        emit_json(plan)
    else:
        print(format_plan(plan))
    problems = memory_problems(plan)
    return refuse("sweep validate", SpecError("\n".join(problems))) if problems else 0


def run_command(args: argparse.Namespace) -> int:
    """Run the sweep on Ray; print a results table and where to look in MLflow."""
    from sweeps.inputs import check_inputs
    from sweeps.plan import format_plan, memory_problems, plan_sweep

    spec = load_spec(args.spec, args.overrides)
    on_cluster = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if not on_cluster:
        _check_tpus(spec, on_cluster)  # first: it needs neither the plan nor Ray
    uri = _reachable_store()  # in seconds, before the plan imports torch and Ray starts
    _warn(check_inputs(spec, files_here=not on_cluster))
    plan = plan_sweep(spec)  # also refuses models that cannot take the data's image size
    problems = memory_problems(plan)
    if problems:
        raise SpecError("\n".join(problems))
    if not on_cluster:
        _check_local_resources(spec)  # before starting anything
    print(format_plan(plan), file=sys.stderr)
    create_sqlite_tables(uri)  # nothing is written before the spec is known to run
    _start_ray_for_sweep(args.address)  # imports the engine while Ray starts
    from sweeps.engine.run import run_sweep
    from sweeps.engine.sweep_runs import SweepConflict

    if on_cluster:
        _check_tpus(spec, on_cluster)
    _check_cluster_resources(spec)
    try:
        with _interruptible(spec.name), contextlib.redirect_stdout(sys.stderr):  # stdout is for results
            result = run_sweep(spec, args.spec, total_trials=plan["trial_count"])
    except SweepConflict as conflict:
        return refuse("sweep run", conflict)
    _print_result(result, args.json)
    return _exit_status(result)


def resume_command(args: argparse.Namespace) -> int:
    """Restore the sweep's Tuner and finish its unfinished trials."""
    if not re.fullmatch(SWEEP_NAME_PATTERN, args.name) or len(args.name) > MAX_NAME_CHARS:
        return refuse("sweep resume", f"{shown(args.name)} is not a sweep name or id (letters, digits, _ . -)")
    _reachable_store()  # before the engine (Ray Tune, MLflow) is imported
    from sweeps.engine.ray_session import init_ray
    from sweeps.engine.run import find_resumable, resume_sweep
    from sweeps.engine.sweep_runs import SweepConflict
    from sweeps.tracking import store

    if store.missing_sqlite_store(store.tracking_uri()):
        return refuse("sweep resume", f"no sweep {args.name} to resume: {redacted(store.tracking_uri())} holds no"
                                      " MLflow store; resume from the folder the sweep ran in, or set"
                                      " MLFLOW_TRACKING_URI")
    try:
        context, directory = find_resumable(args.name)
    except LookupError as error:  # no such sweep, or no Tune state kept for it
        return refuse("sweep resume", error)
    init_ray(args.address)
    try:
        with _interruptible(args.name), contextlib.redirect_stdout(sys.stderr):
            result = resume_sweep(context, directory, force=args.force)
    except SweepConflict as conflict:  # its driver is alive
        return refuse("sweep resume", conflict)
    _print_result(result, args.json)
    return _exit_status(result)


def _start_ray_for_sweep(address: str | None) -> None:
    """`init_ray`, while another thread imports the sweep engine (Ray Tune, Optuna, MLflow: about 1.5 s on 2 cores)
    and opens the MLflow store (a user's first sweep creates `mlflow.db`'s tables: about 1.5 s). Starting Ray is
    mostly waiting for its processes to come up. Ray starts in this thread: the processes it starts on this
    machine end with the thread that started them."""
    from sweeps.engine.ray_session import init_ray

    with ThreadPoolExecutor(max_workers=1) as pool:
        prepared = pool.submit(_import_engine_and_open_store)
        init_ray(address)
        prepared.result()


def _import_engine_and_open_store() -> None:
    import sweeps.engine.run  # noqa: F401  (imported here, for the sweep that follows)
    from sweeps.tracking import store

    store.RetryingMlflowClient(store.tracking_uri()).search_experiments(max_results=1)


@contextlib.contextmanager
def _interruptible(name: str):
    """Ctrl-C and SIGTERM (what schedulers and `kill` send) end the sweep alike, with the resume hint and exit
    status 130. Tune catches the first SIGINT and ends its run in order; Ray's own SIGTERM handler would abort
    the process, so SIGTERM is turned into SIGINT; a second Ctrl-C, which Tune does not catch, lands here."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    except KeyboardInterrupt:
        print(_resume_hint(name), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_hint(name: str) -> str:
    return f"sweep {name} interrupted: its unfinished trials are kept; finish it with: mixer sweep resume {name}"


def _exit_status(result) -> int:
    """0 when every trial ended well, 1 when one failed, 130 when the sweep was interrupted (after the hint)."""
    if result.interrupted:
        print(_resume_hint(result.name), file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return 0 if all(trial.status != "ERROR" for trial in result.trials) else 1


def ls_command(args: argparse.Namespace) -> int:
    """List the sweeps recorded in the MLflow store."""
    from sweeps.tracking import queries

    sweeps = queries.list_sweeps(_reachable_store())
    if args.json:
        emit_json(sweeps)
        return 0
    rows = [
        {
            "sweep": sweep["name"],
            "id": sweep["id"],
            "experiment": sweep["experiment"],
            "status": sweep["status"],
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(sweep["start_time"] / 1000)),
            "trials": sweep["trials"],
            "states": " ".join(f"{state.lower()}={count}" for state, count in sorted(sweep["trial_states"].items())),
        }
        for sweep in sweeps
    ]
    print(format_table(rows))
    return 0


def bench_command(args: argparse.Namespace) -> int:
    """K identical one-worker trials through the engine vs. the same `train()` calls in this process."""
    spec = load_spec(args.spec, args.overrides)
    if args.trials < 1:
        raise SpecError(f"--trials must be >= 1, got {args.trials}")
    from sweeps.bench import engine as engine_bench

    with contextlib.redirect_stdout(sys.stderr):
        figures = engine_bench.measure(spec, args.spec, args.trials)
    if args.json:
        emit_json(figures)
    else:
        meanings = engine_bench.FIGURE_MEANINGS
        print(format_table([{"figure": name, "value": value, "what": meanings[name]} for name, value in figures.items()]))
    return 0


def _check_tpus(spec, on_cluster: bool) -> None:
    """Refuse a TPU sweep whose trials would find no TPU, or no torch_tpu and libtpu, where they would run:
    never a silent fall-back to CPU."""
    if not spec.resources.use_tpu:
        return
    from sweeps.engine.tpu import tpu_problem

    problem = tpu_problem(spec, on_cluster)
    if problem:
        raise SpecError(f"{spec.source}: resources.use_tpu: {problem}")


def _check_local_resources(spec) -> None:
    from sweeps.spec import check_resources

    available = {"CPU": float(os.cpu_count() or 1), "GPU": 0.0}
    if spec.resources.use_gpu:
        import torch

        available["GPU"] = float(torch.cuda.device_count())
    check_resources(spec, available)


def _check_cluster_resources(spec) -> None:
    """Refuse a sweep whose trial does not fit the cluster's live nodes, unless an autoscaler may add nodes that
    hold it: then say what is missing, and let the trials wait for it."""
    import ray

    from sweeps.engine.autoscaling import autoscaler_running
    from sweeps.spec import check_resources

    try:
        check_resources(spec, ray.cluster_resources())
    except SpecError as shortfall:
        if not autoscaler_running():
            raise
        print(f"{shortfall}\n(not yet: the cluster's autoscaler is to add nodes that have them; trials wait until"
              " it does)", file=sys.stderr)


def _print_result(result, as_json: bool) -> None:
    document = redacted(_result_document(result))  # no password of a storage URL on stdout
    if result.not_recorded:
        print(f"MLflow did not answer at the end of the sweep; not written: {result.not_recorded}. The results are"
              f" Tune's, kept in {result.experiment_dir}", file=sys.stderr)
    if as_json:
        emit_json(document)
        return
    print(format_table(_result_rows(result)))
    print(f"\nbest trial: {result.best_trial_id or '-'} ({result.objective[0]})")
    if result.best_checkpoint:
        print(f"best weights: {document['best_checkpoint']}   (a train.init_from for fine-tuning)")
    print(f"MLflow: {document['mlflow_ui']}   (sweep run {result.parent_run_id})")
    if result.optuna_storage:
        print(f"Optuna: optuna-dashboard {document['optuna_storage']}")
    print(f"Tune state: {document['experiment_dir']}")
    print(f"Report: mixer report {result.name}")


def _result_rows(result) -> list[dict[str, Any]]:
    shown_metrics = [*result.objective, metrics.TEST_TOP1, metrics.TRAIN_SIZE, metrics.EPOCH, metrics.WALL_SECONDS]
    rows = []
    for trial in result.trials:
        row: dict[str, Any] = {"trial": trial.trial_id, "status": trial.status}
        row.update(trial.params)
        row.update({name: trial.metrics.get(name) for name in dict.fromkeys(shown_metrics)})
        rows.append(row)
    return rows


def _result_document(result) -> dict[str, Any]:
    return {
        "name": result.name,
        "tracking_uri": result.tracking_uri,
        "mlflow_ui": result.mlflow_ui,
        "parent_run_id": result.parent_run_id,
        "experiment_dir": result.experiment_dir,
        "optuna_storage": result.optuna_storage,
        "objective": result.objective,
        "best_trial_id": result.best_trial_id,
        "best_checkpoint": result.best_checkpoint,
        "not_recorded": result.not_recorded,
        "trials": [
            {"trial_id": t.trial_id, "status": t.status, "params": t.params, "metrics": t.metrics}
            for t in result.trials
        ],
    }
