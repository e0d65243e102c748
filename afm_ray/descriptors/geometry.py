"""The scan window, its pixel grid, and molecules padded into one batch.

Frame and axis conventions shared by every descriptor (and by the simulator's stacks):

* Positions are Cartesian, in Å: the molecule is already rotated so that the tip looks down −z,
  so "height" is z and the atom closest to the tip has the largest z.
* Like the simulator (``SimConfig.scan_size_angstrom``), the scan window is centred on each
  molecule's mean atom xy. Descriptor functions therefore first move every molecule so that its
  mean atom xy is at the origin (:func:`centred_on_mean_xy`; z is left alone) and evaluate on a
  window given in that centred frame, by default x, y ∈ [−8, 8) Å. Pass ``centre=False`` to use
  positions as given. Positions that come back (e.g. decoded xyz atoms) are in the centred frame.
* A 2D map has shape ``(B, nx, ny)``; element ``[b, i, j]`` is the value at pixel centre
  ``(x_i, y_j)`` (x first, like the simulated stacks ``(B, nx, ny, nz)``). Plot with
  ``imshow(map.T, origin="lower", extent=window.extent)``.
* Pixel centres sit in the middle of ``nx × ny`` equal cells tiling the window:
  ``x_i = x_min + (i + ½)·Δx`` with ``Δx = width / nx`` (0.125 Å for 16 Å on 128 px). The 1 Å
  boxes of the xyz descriptor then hold exactly 8 × 8 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from afm_ray.elements import ELEMENT_TABLE
from afm_ray.errors import InputError


@dataclass(frozen=True)
class ScanWindow:
    """The lateral scan region (Å) and its pixel grid.

    Attributes:
        x_min, y_min: lower-left corner of the window in Å.
        width, height: extent along x and y in Å.
        nx, ny: number of pixels along x and y.
    """

    x_min: float = -8.0
    y_min: float = -8.0
    width: float = 16.0
    height: float = 16.0
    nx: int = 128
    ny: int = 128

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0:
            raise InputError("scan window", f"width and height must be > 0 Å, got {self.width} × {self.height}")
        if self.nx < 1 or self.ny < 1:
            raise InputError("scan window", f"pixel counts must be ≥ 1, got {self.nx} × {self.ny}")

    @classmethod
    def centred(cls, centre_xy=(0.0, 0.0), size=(16.0, 16.0), pixels=(128, 128)) -> "ScanWindow":
        """A window of ``size`` Å and ``pixels`` px centred on ``centre_xy`` (Å)."""
        cx, cy = (float(v) for v in centre_xy)
        width, height = (float(v) for v in size)
        return cls(cx - width / 2, cy - height / 2, width, height, int(pixels[0]), int(pixels[1]))

    @property
    def shape(self) -> tuple[int, int]:
        """``(nx, ny)``."""
        return self.nx, self.ny

    @property
    def pixel_size(self) -> tuple[float, float]:
        """``(Δx, Δy)`` in Å."""
        return self.width / self.nx, self.height / self.ny

    @property
    def centre(self) -> tuple[float, float]:
        return self.x_min + self.width / 2, self.y_min + self.height / 2

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(x_min, x_max, y_min, y_max)`` in Å, for matplotlib's ``imshow(extent=...)``."""
        return self.x_min, self.x_min + self.width, self.y_min, self.y_min + self.height

    def pixel_x(self) -> np.ndarray:
        """(nx,) x coordinates of pixel centres in Å."""
        return self.x_min + (np.arange(self.nx) + 0.5) * (self.width / self.nx)

    def pixel_y(self) -> np.ndarray:
        """(ny,) y coordinates of pixel centres in Å."""
        return self.y_min + (np.arange(self.ny) + 0.5) * (self.height / self.ny)

    @classmethod
    def from_sim_config(cls, sim_config) -> "ScanWindow":
        """The window of a :class:`afm_ray.sim.config.SimConfig` (centred frame)."""
        return cls.centred((0.0, 0.0), sim_config.scan_size_angstrom, sim_config.scan_pixels)


DEFAULT_WINDOW = ScanWindow()
"""16 × 16 Å centred on the origin, 128 × 128 px (thesis 3.2)."""


@dataclass(frozen=True)
class AtomBatch:
    """Molecules padded to a common atom count so descriptors can be computed for a batch at once.

    Attributes:
        positions: (B, N, 3) float64 positions in Å; padding rows are 0.
        numbers: (B, N) int64 atomic numbers; 0 marks padding.
        charges: (B, N) float64 partial charges in e; padding 0.
        mask: (B, N) bool, True for real atoms.
    """

    positions: np.ndarray
    numbers: np.ndarray
    charges: np.ndarray
    mask: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.numbers.shape[0])

    def top_z(self) -> np.ndarray:
        """(B,) z of the highest nucleus of each molecule, Å."""
        return np.where(self.mask, self.positions[..., 2], -np.inf).max(axis=1)

    def per_atom(self, table_lookup) -> np.ndarray:
        """(B, N) float64 values of ``table_lookup(numbers)`` for real atoms, 0 for padding.

        ``table_lookup`` maps an int array of atomic numbers to an array of the same shape, e.g.
        ``ELEMENT_TABLE.vdw_radius``.
        """
        values = np.zeros(self.numbers.shape, dtype=np.float64)
        values[self.mask] = np.asarray(table_lookup(self.numbers[self.mask]), dtype=np.float64)
        return values

    def molecule(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(positions (N, 3) Å, numbers (N,), charges (N,) e)`` of one molecule, padding removed."""
        keep = self.mask[index]
        return self.positions[index][keep], self.numbers[index][keep], self.charges[index][keep]

    def translated(self, shift_xyz: np.ndarray) -> "AtomBatch":
        """A copy with each molecule moved by ``shift_xyz`` ((B, 3) or (3,) Å); padding stays 0."""
        shift = np.broadcast_to(np.asarray(shift_xyz, dtype=np.float64), (self.batch_size, 3))
        positions = np.where(self.mask[..., None], self.positions + shift[:, None, :], 0.0)
        return AtomBatch(positions, self.numbers, self.charges, self.mask)


def _is_single_molecule(item: Any) -> bool:
    """True for one molecule (an object with positions/numbers, or a (positions, numbers[, charges])
    tuple); False for a collection of molecules."""
    if hasattr(item, "positions") and hasattr(item, "numbers"):
        return True
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        return _looks_like_positions(item[0])
    return False


def _looks_like_positions(item: Any) -> bool:
    if hasattr(item, "positions"):
        return False
    try:
        array = np.asarray(item, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return array.ndim == 2  # (N, 3) expected; a wrong width is reported by _unpack


def _unpack(item: Any, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if hasattr(item, "positions") and hasattr(item, "numbers"):
        positions, numbers = item.positions, item.numbers
        charges = getattr(item, "charges", None)
        if charges is None and hasattr(item, "get_initial_charges"):  # ase.Atoms
            charges = item.get_initial_charges()
    else:
        positions, numbers = item[0], item[1]
        charges = item[2] if len(item) == 3 else None
    positions = np.asarray(positions, dtype=np.float64)
    numbers = ELEMENT_TABLE.check_numbers(np.asarray(numbers), where)  # integers, known elements
    charges = np.zeros(numbers.shape, dtype=np.float64) if charges is None else np.asarray(charges, dtype=np.float64)
    if numbers.ndim != 1 or numbers.size == 0:
        raise InputError(where, "molecule has no atoms")
    if positions.shape != (numbers.size, 3):
        raise InputError(where, f"positions have shape {positions.shape}, expected ({numbers.size}, 3)")
    if charges.shape != numbers.shape:
        raise InputError(where, f"charges have shape {charges.shape}, expected ({numbers.size},)")
    if not (np.isfinite(positions).all() and np.isfinite(charges).all()):
        raise InputError(where, "positions or charges are not finite")
    return positions, numbers, charges


def as_atom_batch(molecules: Any) -> AtomBatch:
    """Pad molecules into an :class:`AtomBatch`.

    ``molecules`` is an :class:`AtomBatch` (returned unchanged), one molecule, or an iterable of
    molecules. A molecule is any object with ``positions`` (N, 3) Å, ``numbers`` (N,) and
    optionally ``charges`` (N,) e attributes (e.g. :class:`afm_ray.molecules.Molecule`; for
    ``ase.Atoms`` the initial charges are used), or a tuple ``(positions, numbers)`` /
    ``(positions, numbers, charges)``. Missing charges are 0.
    """
    if isinstance(molecules, AtomBatch):
        return molecules
    items: list[Any] = [molecules] if _is_single_molecule(molecules) else list(_iterate(molecules))
    if not items:
        raise InputError("molecules", "empty batch: need at least one molecule")
    unpacked = [_unpack(item, f"molecule {index}") for index, item in enumerate(items)]
    n_max = max(numbers.size for _, numbers, _ in unpacked)
    batch = len(unpacked)
    positions = np.zeros((batch, n_max, 3))
    numbers = np.zeros((batch, n_max), dtype=np.int64)
    charges = np.zeros((batch, n_max))
    mask = np.zeros((batch, n_max), dtype=bool)
    for index, (p, z, q) in enumerate(unpacked):
        n = z.size
        positions[index, :n], numbers[index, :n], charges[index, :n], mask[index, :n] = p, z, q, True
    return AtomBatch(positions, numbers, charges, mask)


def padded_atom_batch(numbers: np.ndarray, positions: np.ndarray, charges: np.ndarray, counts: np.ndarray) -> AtomBatch:
    """The :class:`AtomBatch` of checked atoms concatenated molecule after molecule: ``numbers`` (N,) int,
    ``positions`` (N, 3) Å, ``charges`` (N,) e, ``counts`` (B,) atoms per molecule (e.g.
    :meth:`afm_ray.sim.simulator.LoadedBatch.atoms`); the arrays :func:`as_atom_batch` would build."""
    counts = np.asarray(counts)
    mask = np.arange(int(counts.max())) < counts[:, None]
    padded_positions = np.zeros((*mask.shape, 3))
    padded_numbers = np.zeros(mask.shape, dtype=np.int64)
    padded_charges = np.zeros(mask.shape)
    padded_positions[mask], padded_numbers[mask], padded_charges[mask] = positions, numbers, charges
    return AtomBatch(padded_positions, padded_numbers, padded_charges, mask)


def centred_on_mean_xy(batch: AtomBatch) -> AtomBatch:
    """``batch`` with each molecule moved in xy so that its mean atom xy is (0, 0) (as the
    simulator centres its window); z unchanged."""
    count = batch.mask.sum(axis=1)
    mean_xy = (batch.positions[..., :2] * batch.mask[..., None]).sum(axis=1) / count[:, None]
    return batch.translated(np.column_stack([-mean_xy, np.zeros(batch.batch_size)]))


def prepare_atoms(molecules: Any, centre: bool = True) -> AtomBatch:
    """:func:`as_atom_batch`, then :func:`centred_on_mean_xy` when ``centre`` is true."""
    batch = as_atom_batch(molecules)
    return centred_on_mean_xy(batch) if centre else batch


def _iterate(molecules: Any) -> Iterable[Any]:
    try:
        return iter(molecules)
    except TypeError:
        raise InputError("molecules", f"expected a molecule or a list of molecules, got {type(molecules).__name__}") from None
