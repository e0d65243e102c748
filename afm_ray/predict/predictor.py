"""Running a loaded model on prepared stacks, decoding xyz atoms, and writing the results.

:class:`Predictor` groups stacks into torch batches of ``batch_size``. By default everything runs
in this process (CPU, or ``device="cuda"``). When Ray is connected (``ray.is_initialized()``,
e.g. after ``afm-ray predict --ray`` or inside a Ray job) and there is more than one batch, the
batches run as Ray tasks, each on a GPU (``num_gpus=1``) when the cluster has GPUs, the model
shared once through the object store.

Per stack :func:`write_prediction` writes, into the output folder:

* ``NAME.npz`` — every output map (``atomic_disks``, ``vdw_spheres``, ``height_map`` (B = 1
  removed: (nx, ny), Å); ``es_map`` (V); xyz: ``xyz_classes`` (n_classes, gx, gy)
  probabilities and ``xyz_offsets`` (3, gx, gy) Å), the network input ``x`` (C, nx, ny, K),
  ``slice_indices`` (K,), ``zoom`` (2,), ``window_extent_angstrom`` (x_min, x_max, y_min,
  y_max), ``model`` (the reference) and, for xyz models, the decoded atoms ``atom_positions``
  (n, 3) Å, ``atom_confidence`` (n,), ``atom_classes`` (n,);
* ``NAME.xyz`` (xyz models) — the atoms after thresholding and non-maximum suppression as
  extended xyz, readable by ``ase.io.read``: per-atom ``confidence`` and ``atom_class``; the
  symbol is the class's element where a class is one element, else ``X``. Positions: x, y in Å
  from the centre of the (resampled) scan window, z in Å relative to the highest atom (≤ 0);
* ``NAME.png`` — input slices and predictions (:mod:`afm_ray.figures.predictions`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from afm_ray.descriptors import XyzGrid
from afm_ray.descriptors.geometry import ScanWindow
from afm_ray.descriptors.xyz_codec import DEFAULT_NMS_RADIUS, DEFAULT_REPORT_THRESHOLD, Atoms
from afm_ray.descriptors.xyz_classes import element_groups
from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError
from afm_ray.predict.preprocess import ModelInput, PreparedStack
from afm_ray.registry.loading import LoadedModel

DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class Prediction:
    """The model's outputs for one stack.

    Attributes:
        stack: the prepared input.
        outputs: name → array without the batch axis: maps (nx, ny); xyz ``xyz_classes``
            (n_classes, gx, gy) and ``xyz_offsets`` (3, gx, gy).
        atoms: xyz models: decoded atoms (window-centred x, y; z below the top atom), else None.
    """

    stack: PreparedStack
    outputs: dict[str, np.ndarray]
    atoms: Atoms | None = None


@dataclass
class Predictor:
    """Batched inference with one loaded model.

    Args:
        model: from :func:`afm_ray.registry.load_model`.
        device: torch device for the local path (``cpu`` or ``cuda``).
        batch_size: stacks per forward pass.
        threshold: xyz atom confidence threshold (1 − p_background ≥ threshold).
        nms_radius: xyz non-maximum-suppression radius in Å (0 = off).
        use_ray: ``None``: Ray tasks when Ray is initialised and there is more than one batch;
            ``True``/``False`` to force.
    """

    model: LoadedModel
    device: str = "cpu"
    batch_size: int = DEFAULT_BATCH_SIZE
    threshold: float = DEFAULT_REPORT_THRESHOLD
    nms_radius: float = DEFAULT_NMS_RADIUS
    use_ray: bool | None = None
    _grid: XyzGrid | None = field(init=False, default=None, repr=False)
    _model_ref: object = field(init=False, default=None, repr=False)  # the network in Ray's object store, put once

    def __post_init__(self):
        if self.batch_size < 1:
            raise InputError("--batch-size", f"must be ≥ 1, got {self.batch_size}")
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError("--threshold", f"must be in [0, 1], got {self.threshold}")
        if self.nms_radius < 0:
            raise InputError("--nms-radius", f"must be ≥ 0 Å, got {self.nms_radius}")
        if self.model.config.model.spec.predicts_atoms:
            groups = element_groups(self.model.config.model.element_classes)
            self._grid = XyzGrid(window=self.window, element_groups=groups)

    @property
    def model_input(self) -> ModelInput:
        return ModelInput.from_config(self.model.config)

    @property
    def window(self) -> ScanWindow:
        """The model's scan window, centred on (0, 0) Å."""
        return ScanWindow.from_sim_config(self.model.config.sim)

    def predict_arrays(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs for ``x`` (B, C, nx, ny, K) float32: name → (B, …) arrays."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        batches = [x[start:start + self.batch_size] for start in range(0, len(x), self.batch_size)]
        if self._ray_wanted(len(batches)):
            import ray

            if self._model_ref is None:
                self._model_ref = ray.put(self.model.packed)
            packed_outputs = _predict_on_ray(self._model_ref, batches)
        else:
            packed_outputs = [_forward(self.model.packed, batch, self.device) for batch in batches]
        packed = torch.from_numpy(np.concatenate(packed_outputs)) if packed_outputs else torch.zeros(0)
        return {name: value.numpy() for name, value in self.model.packed.unpack(packed).items()}

    def predict(self, stacks: Sequence[PreparedStack]) -> list[Prediction]:
        """One :class:`Prediction` per prepared stack, in order."""
        if not stacks:
            return []
        outputs = self.predict_arrays(np.stack([s.x for s in stacks]))
        atoms: list[Atoms | None] = [None] * len(stacks)
        if self._grid is not None:
            atoms = self._grid.decode(outputs["xyz_classes"], outputs["xyz_offsets"], threshold=self.threshold,
                                      nms_radius=self.nms_radius or None)
        return [Prediction(stack, {name: value[index] for name, value in outputs.items()}, atoms[index])
                for index, stack in enumerate(stacks)]

    @property
    def class_names(self) -> tuple[str, ...]:
        """xyz class names (channel 0 background), e.g. ("background", "atom")."""
        return self._grid.class_names if self._grid is not None else ()

    def _ray_wanted(self, n_batches: int) -> bool:
        if self.use_ray is not None:
            return self.use_ray
        import ray

        return n_batches > 1 and ray.is_initialized()


def _forward(packed, batch: np.ndarray, device: str) -> np.ndarray:
    """One forward pass of the packed network: (B, C, nx, ny, K) → packed outputs (B, …) float32."""
    device = torch.device(device)
    network = packed.to(device)
    with torch.no_grad():
        return network(torch.from_numpy(batch).to(device)).float().cpu().numpy()


def _predict_remote(packed, batch: np.ndarray) -> np.ndarray:
    """Ray task body: the batch on this worker's GPU when Ray gave it one, else its CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return _forward(packed, batch, device)


def _predict_on_ray(model_ref, batches: list[np.ndarray]) -> list[np.ndarray]:
    """One Ray task per batch (one GPU each when the cluster has GPUs); outputs in batch order."""
    import ray

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_gpus=gpus, num_cpus=1)(_predict_remote)
    return ray.get([task.remote(model_ref, batch) for batch in batches])


# -- files ----------------------------------------------------------------------------------------
def atom_symbols(classes: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Element symbol per atom class: the class's element when it is one element, else ``X``."""
    symbols = []
    for value in np.asarray(classes).tolist():
        name = class_names[value] if 0 <= value < len(class_names) else ""
        parts = [p for p in name.replace("/", ",").split(",") if p]
        symbols.append(parts[0] if len(parts) == 1 and parts[0] in ELEMENT_TABLE.symbols else "X")
    return symbols


def write_atoms_xyz(path: str | Path, atoms: Atoms, class_names: Sequence[str], comment: dict | None = None) -> Path:
    """Extended xyz of decoded atoms with per-atom ``confidence`` and ``atom_class`` (ASE-readable)."""
    import ase
    import ase.io

    structure = ase.Atoms(symbols=atom_symbols(atoms.classes, class_names), positions=atoms.positions)
    structure.arrays["confidence"] = np.asarray(atoms.confidence, dtype=np.float64)
    structure.arrays["atom_class"] = np.asarray(atoms.classes, dtype=np.int64)
    structure.info.update(comment or {})
    path = Path(path)
    ase.io.write(path, structure, format="extxyz")
    return path


def write_prediction(prediction: Prediction, out_dir: str | Path, predictor: Predictor,
                     figure: bool = True) -> dict[str, Path]:
    """Write ``NAME.npz``, ``NAME.xyz`` (xyz models) and ``NAME.png``; returns kind → path."""
    from afm_ray.figures.predictions import plot_prediction

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stack, window = prediction.stack, predictor.window
    written: dict[str, Path] = {}
    arrays = {**prediction.outputs, "x": stack.x, "slice_indices": stack.slice_indices,
              "zoom": np.asarray(stack.zoom), "window_extent_angstrom": np.asarray(window.extent),
              "model": np.asarray(predictor.model.reference)}
    if prediction.atoms is not None:
        arrays.update(atom_positions=prediction.atoms.positions, atom_confidence=prediction.atoms.confidence,
                      atom_classes=prediction.atoms.classes)
    written["npz"] = out_dir / f"{stack.name}.npz"
    np.savez_compressed(written["npz"], **arrays)
    if prediction.atoms is not None:
        written["xyz"] = write_atoms_xyz(out_dir / f"{stack.name}.xyz", prediction.atoms, predictor.class_names,
                                         {"model": predictor.model.reference, "threshold": predictor.threshold,
                                          "nms_radius_angstrom": predictor.nms_radius,
                                          "frame": "x,y from the scan window centre; z from the top atom"})
    if figure:
        written["png"] = plot_prediction(out_dir / f"{stack.name}.png", stack.x, prediction.outputs, prediction.atoms,
                                         window, predictor.threshold, title=f"{stack.name} — {predictor.model.describe()}")
    return written


def write_summary(path: str | Path, predictor: Predictor, records: list[dict]) -> Path:
    """``summary.json``: the model, its expected input, and one record per stack."""
    path = Path(path)
    model = predictor.model
    path.write_text(json.dumps({"model": model.reference, "registered_name": model.registered_name,
                                "version": model.version, "run_id": model.run_id, "architecture": model.model_name,
                                "input": model.describe(), "stacks": records}, indent=2, default=str))
    return path
