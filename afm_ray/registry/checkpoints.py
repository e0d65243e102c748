"""A training checkpoint folder, read without Ray or the training loop.

``afm-ray train`` writes one folder per epoch (:meth:`afm_ray.train.checkpointing.TrainingState.save`):
``state.pt`` holds the state dicts of model, optimiser and scheduler, the epoch and the run's
config as JSON; ``history.json`` the per-epoch metrics. Training resumes from it, and the registry
and ``afm-ray predict`` load its network (:func:`load_checkpoint_model`).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Collection
from pathlib import Path

import torch

from afm_ray.config import one_line, validate
from afm_ray.errors import InputError
from afm_ray.models.spec import refuse_untrusted_module
from afm_ray.recipe import TrainConfig

CHECKPOINT_FILE = "state.pt"
HISTORY_FILE = "history.json"


def read_checkpoint_state(checkpoint_path: str | Path, map_location="cpu") -> dict:
    """The ``state.pt`` of a checkpoint folder: ``model``, ``optimizer`` and ``scheduler`` state dicts,
    ``epoch`` and ``config_json``. Read with ``weights_only=True``: tensors and plain data only, so
    a crafted file cannot run code; anything else is refused with :class:`InputError`."""
    path = Path(checkpoint_path) / CHECKPOINT_FILE
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), "")
        raise InputError(str(path), "holds objects other than tensors and plain data, which afm-ray does not "
                                    f"unpickle (not an afm-ray checkpoint?) {reason[:200]}".rstrip()) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # torch's zip reader: truncated or corrupt
        raise InputError(str(path), f"not a readable checkpoint (truncated or corrupt?): {one_line(exc, 200)}") from None
    missing = {"model", "config_json"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise InputError(str(path), f"not an afm-ray checkpoint: no {', '.join(sorted(missing))}")
    return state


def load_checkpoint_model(checkpoint_path: str | Path, allowed_modules: Collection[str] | None = None
                          ) -> tuple[torch.nn.Module, TrainConfig, list[dict]]:
    """The trained network (eval mode, CPU), its config and its history from a checkpoint folder.

    ``allowed_modules``: for a checkpoint from elsewhere, the model modules its config may import
    (:func:`~afm_ray.models.spec.refuse_untrusted_module`); ``None``: a checkpoint this afm-ray wrote (trusted).
    """
    folder = Path(checkpoint_path)
    state = read_checkpoint_state(folder)
    where = str(folder / CHECKPOINT_FILE)
    try:
        config_data = json.loads(state["config_json"])
    except (TypeError, ValueError) as exc:
        raise InputError(where, f"config_json is not JSON ({one_line(exc, 200)})") from None
    if allowed_modules is not None:
        refuse_untrusted_module(config_data, where, allowed_modules)
    config = validate(TrainConfig, config_data, f"{where}: config_json")
    model = config.build_network()
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # missing, extra or misshapen weights
        raise InputError(where, f"its weights do not fit a {config.model.name} model: {one_line(exc, 200)}") from None
    model.eval()
    try:
        history = json.loads((folder / HISTORY_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(str(folder / HISTORY_FILE), f"unreadable training history ({one_line(exc, 200)})") from None
    return model, config, history
