"""Experiment tracking: Sacred at the edge, MongoDB as the store, Omniboard to look, DVC hashes for lineage.

Library code never imports Sacred; stage scripts call `run_tracked` with their config and a main function
that receives the run (for `log_scalar` and `info`). Importing this package starts nothing: the embedded
MongoDB server starts when a run or a command needs it.

| module | job |
|---|---|
| `store` | which MongoDB (environment URL or embedded), redaction of credentials |
| `server` | the embedded SecantusDB server process: start, stop, status |
| `observers` | fault-tolerant Sacred observers, bounded captured output |
| `run` | `run_tracked`, `run_name` |
| `lineage` | git commit, DVC hashes of inputs and outputs, data manifests, environment |
| `upload` | runs that only the file observer holds → MongoDB, idempotently |
| `query` | results, compare and lineage reports from the database |
| `omniboard` | install and serve Omniboard on 127.0.0.1 |
"""

from clipflux.tracking.lineage import environment_info
from clipflux.tracking.run import configure_torch, run_name, run_tracked

__all__ = ["configure_torch", "environment_info", "run_name", "run_tracked"]
