"""Hyperparameter sweeps with Ray Tune over afm-ray's training (``afm-ray tune``).

The thesis searched its loss hyperparameters by hand (two days per training: γ at five values, αn
and βPL "by intuition"). A sweep here trains every trial through the same Ray Train loop as
``afm-ray train`` (:func:`afm_ray.train.trainer.build_trainer`), each epoch's report becoming one
Tune iteration that ASHA can act on, while a model-based searcher (Optuna) proposes the next
trial. Trials are compared on a metric that means the same whatever the loss settings (atom F1
for xyz, unweighted per-descriptor MSE for DSH/ES), and each trial is an MLflow child run of
the sweep's parent run. The best trial's model is registered with an alias (``@champion``).

Simulation capacity: all trials share one pool of simulation actors (``pipeline.num_sim_actors``
of the training config), created once with its OpenCL kernels and the fixed validation/test
sets; ``k`` concurrent trials split that pool's throughput (each trial's data-wait fraction is
logged, and the runner says so at the start). Per-trial pools would rebuild kernels and
re-simulate nothing new, so the shared pool is the default; scale it with
``train_overrides: {pipeline.num_sim_actors: …}``.

The sweep definitions (search spaces, searcher, scheduler, budget) are YAML files in the repository's
``tune/`` folder, described in ``tune/README.md``; this package holds no definitions, only the code.
"""

from afm_ray.sweep.config import SweepConfig, load_sweep_config
from afm_ray.sweep.runner import SweepOutcome, run_sweep

__all__ = ["SweepConfig", "SweepOutcome", "load_sweep_config", "run_sweep"]
