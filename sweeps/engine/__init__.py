"""The sweep engine: search (`search`), scheduling (`schedulers`), progress and MLflow closing of trial runs
(`progress`), run and resume (`run`), the results (`summary`), the trial launchers (`trial`) and the worker
loop they share (`worker`), which failures are retried (`failures`), trial scratch folders (`scratch`), starting
Ray (`ray_session`, `autoscaling`), which run of a sweep is which (`sweep_runs`) and one driver per sweep
(`driver`). Import the submodule you need: a trial's process imports `trial`/`worker` without Tune's search or
MLflow."""
