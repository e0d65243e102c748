"""Using trained models: registry lookup, prediction on simulated or experimental AFM stacks,
and matching experiments to simulated rotations of a known molecule.

From Python, without the CLI::

    from afm_ray.predict import Predictor, load_model, prepare_stack, read_stacks
    model = load_model("models:/afm-dsh@current", tracking_uri="sqlite:///mlruns.db")
    predictor = Predictor(model)
    stacks = read_stacks("experiment.npz")                     # AfmStack: df (C, nx, ny, nz), z far → close
    predictions = predictor.predict([prepare_stack(s, predictor.model_input) for s in stacks])
    predictions[0].outputs["vdw_spheres"]                      # (nx, ny) Å, x first

Models come from the registry (:func:`afm_ray.registry.load_model`: ``models:/``, ``runs:/``, local
folders; re-exported here). Modules: :mod:`~afm_ray.predict.inputs` (``.npz``/``.npy``/Nanonis readers and their documented layout),
:mod:`~afm_ray.predict.preprocess` (slice choice, resampling, normalisation — training's
deterministic steps), :mod:`~afm_ray.predict.predictor` (batched inference, xyz decoding, output
files), :mod:`~afm_ray.predict.match` (rotation search by cross-correlation of vdW Spheres);
the figures are drawn by :mod:`~afm_ray.figures.predictions`.
"""

from afm_ray.predict.inputs import AfmStack, read_stacks
from afm_ray.predict.match import (MatchSettings, evenly_spread_rotations, match_experiments,
                                   normalised_cross_correlation)
from afm_ray.predict.predictor import Prediction, Predictor, write_prediction
from afm_ray.predict.preprocess import ModelInput, PreparedStack, PrepareSettings, choose_slices, prepare_stack
from afm_ray.registry.loading import LoadedModel, load_model

__all__ = [
    "AfmStack", "LoadedModel", "MatchSettings", "ModelInput", "Prediction", "Predictor", "PrepareSettings",
    "PreparedStack", "choose_slices", "evenly_spread_rotations", "load_model",
    "match_experiments", "normalised_cross_correlation", "prepare_stack", "read_stacks", "write_prediction",
]
