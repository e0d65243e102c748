"""Search spaces: Ray Tune domains from :class:`~afm_ray.sweep.config.Dimension` s, and trial configs from sampled values."""

from __future__ import annotations

import copy

import numpy as np
from ray import tune

from afm_ray.config import apply_overrides, validate
from afm_ray.errors import InputError
from afm_ray.sweep.config import Dimension
from afm_ray.recipe import TrainConfig

# Tune splits param_space keys on "." (nesting) and its searchers flatten them with "/": neither may
# appear in a flat key, so config paths are spelled with this separator inside Tune.
KEY_SEPARATOR = "__"


def param_key(path: str) -> str:
    return path.replace(".", KEY_SEPARATOR)


def param_path(key: str) -> str:
    return key.replace(KEY_SEPARATOR, ".")


def domain(dimension: Dimension):
    kind, value = dimension.kind, getattr(dimension, dimension.kind)
    if kind == "uniform":
        return tune.uniform(*value)
    if kind == "loguniform":
        return tune.loguniform(*value)
    if kind == "randint":
        return tune.randint(*value)
    if kind == "choice":
        return tune.choice(value)
    return tune.grid_search(value)


def param_space(search: dict[str, Dimension]) -> dict:
    return {param_key(path): domain(dimension) for path, dimension in search.items()}


def trial_config(base: dict, train_overrides: dict, params: dict, where: str = "trial") -> TrainConfig:
    """The training config of one trial: base YAML + sweep overrides + sampled hyperparameters.

    A path whose last part is an integer indexes a tuple field (``loss.dsh_weights.1``). Each path must name a
    field of the base's resolved config (defaults included); the values are set in the YAML as written, so a
    section the base leaves to its defaults gets them from the trial's own model (``loss``).
    """
    data = apply_overrides(base, [f"{key}={_yaml(value)}" for key, value in train_overrides.items()], "train_overrides")
    resolved = validate(TrainConfig, data, where).model_dump(mode="json")
    for key, value in params.items():
        path = param_path(key)
        parts = path.split(".")
        node, written = resolved, data
        for part in parts[:-1]:
            node, written = _child(node, part, path), _written_child(written, part, _child(node, part, path))
        last = parts[-1]
        if isinstance(written, list) and last.isdigit() and int(last) < len(written):
            written[int(last)] = _plain(value)
        elif isinstance(written, dict) and isinstance(node, dict) and last in node:
            written[last] = _plain(value)
        else:
            raise InputError(f"search: {path}", "not a field of the training config (unknown hyperparameter name)")
    return validate(TrainConfig, data, f"{where} with {dict((param_path(k), _plain(v)) for k, v in params.items())}")


def _child(node, part: str, path: str):
    """``node``'s field or item ``part`` in the resolved config."""
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    if isinstance(node, dict) and part in node:
        return node[part]
    raise InputError(f"search: {path}", "not a field of the training config")


def _written_child(written, part: str, resolved_child):
    """``written``'s section or list ``part``, taken from the resolved config where the YAML leaves it out."""
    key = int(part) if isinstance(written, list) else part
    if isinstance(written, dict) and not isinstance(written.get(part), (dict, list)):
        written[part] = copy.deepcopy(resolved_child)
    return written[key]


def check_space(base: dict, train_overrides: dict, search: dict[str, Dimension]) -> None:
    """Every dimension names a real field, its range yields valid configs, and it leaves the shared data alone.

    All trials of a sweep share one pool of simulation actors and one pair of fixed validation /
    test sets, built from the base config; a dimension that would change what they make (``sim.*``,
    ``augment.*``, ``data.*``, ``descriptors.*``, the model's name or element classes, the actors'
    ``pipeline.*`` placement and the pool's dispatch limits) is refused here rather than silently
    ignored by the trials; settings each trial's workers apply themselves (object-store budget,
    in-flight, attempts, prefetch, caches) may be searched. Raises :class:`InputError`.
    """
    reference = trial_config(base, train_overrides, {})
    for path, dimension in search.items():
        for value in dimension.values_to_check():
            trial = trial_config(base, train_overrides, {param_key(path): value}, where=f"search: {path}")
            if (trial.sample_settings.actor_identity() != reference.sample_settings.actor_identity()
                    or trial.pipeline.actor_identity() != reference.pipeline.actor_identity()):
                raise InputError(f"search: {path}", f"value {_plain(value)!r} changes the simulated data or the "
                                 "simulation actors, which every trial of a sweep shares (built once from the "
                                 "base config); search training hyperparameters only, and run one sweep per "
                                 "data setting (set it in train_overrides)")


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _yaml(value) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value
