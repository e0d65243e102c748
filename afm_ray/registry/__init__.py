"""The MLflow model registry: register trained models, import published weights, load any model
reference, list and describe what is registered.

From Python, without the CLI::

    from afm_ray.registry import describe_model, list_models, load_model
    model = load_model("models:/afm-dsh@current", tracking_uri="sqlite:///mlruns.db")  # LoadedModel
    model.packed(x)                                   # x (B, C, nx, ny, K) float32 → packed outputs
    [summary.name for summary in list_models("sqlite:///mlruns.db")]

Modules: :mod:`~afm_ray.registry.tracking` (MLflow runs with a recipe's params, the outage-proof
:class:`~afm_ray.registry.tracking.RunTracker`, preflight), :mod:`~afm_ray.registry.registration`
(log a network and register it as ``NAME@ALIAS``, pickle-free), :mod:`~afm_ray.registry.published`
(the published ASD-AFM weights), :mod:`~afm_ray.registry.checkpoints` (a training checkpoint folder),
:mod:`~afm_ray.registry.loading` (``models:/``, ``runs:/``, MLflow model and checkpoint folders),
:mod:`~afm_ray.registry.catalog` (list, show), :mod:`~afm_ray.registry.reregister` (a pickled model
again, in the safe format).

The registry reads the training recipe (:mod:`afm_ray.recipe`) and models, never training,
prediction or evaluation: those import it.
"""

from afm_ray.registry.catalog import RegisteredModelSummary, VersionSummary, config_summary, describe_model, list_models
from afm_ray.registry.checkpoints import load_checkpoint_model
from afm_ray.registry.loading import LoadedModel, PickledModelWarning, load_model
from afm_ray.registry.published import import_asdafm
from afm_ray.registry.registration import log_and_register
from afm_ray.registry.reregister import reregister_model

__all__ = [
    "LoadedModel", "PickledModelWarning", "RegisteredModelSummary", "VersionSummary", "config_summary",
    "describe_model", "import_asdafm", "list_models", "load_checkpoint_model", "load_model", "log_and_register",
    "reregister_model",
]
