"""MLflow for sweeps: the schema's names (`schema`, no MLflow import), whether the store answers at all (`reach`,
no MLflow import), the store and its retries (`store`),
reading sweeps back (`queries`), writing runs (`recording`), the sweep's one writer actor (`writer`) and weights
kept as artifacts (`artifacts`)."""
