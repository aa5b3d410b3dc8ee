"""What each heavy stage does, as one call: the stage scripts under `stages/` read their arguments and make it.

A job connects the library (data, models, methods, the trainer, the evaluator) with tracking: it builds what the
stage's params ask for, runs the work as a tracked run (`clipflux.tracking.run_tracked`) and writes the stage's
outputs. The stage scripts run their main through `clipflux.errors.reported`, so that a bad parameter ends the
stage with one line naming the key, not a traceback.

| module | stage |
|---|---|
| `pretrain` | `pretrain`: the base model, trained on the pool or loaded from pretrained weights |
| `train` | `train@<experiment>`: every seed of an experiment over its stream |
| `evaluate` | `evaluate_base`, `evaluate@<experiment>`: the evaluation matrix and its metrics |
"""

