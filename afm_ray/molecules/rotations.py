"""Choosing the scan directions of a molecule (thesis Eq. 25).

100 candidate directions spread evenly on the sphere (a Fibonacci lattice); for each the molecule
is rotated so that the direction points up (+z, towards the tip) and scored by
``S = Σ_i exp(−β d_i)`` with ``d_i = z_max − z_i ≥ 0`` the depth of atom i below the atom
closest to the tip. The best ``n_keep`` (20 for DSH/ES, 30 for xyz) rotations are kept:
rotations that show many atoms near the top win. Everything is deterministic.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CANDIDATES = 100
DEFAULT_BETA_PER_ANGSTROM = 1.0


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly on the sphere (golden-angle spiral), deterministic."""
    if n < 1:
        raise ValueError(f"number of directions must be ≥ 1, got {n}")
    index = np.arange(n) + 0.5
    z = 1.0 - 2.0 * index / n
    radius = np.sqrt(1.0 - z * z)
    azimuth = np.pi * (3.0 - np.sqrt(5.0)) * index
    return np.stack([radius * np.cos(azimuth), radius * np.sin(azimuth), z], axis=1)


def rotations_to_z(directions: np.ndarray) -> np.ndarray:
    """(n, 3, 3) proper rotations R with ``R @ d = +z`` for each unit direction d (shortest arc)."""
    directions = np.asarray(directions, dtype=np.float64)
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    z_axis = np.array([0.0, 0.0, 1.0])
    axis = np.cross(directions, z_axis)
    sin_angle = np.linalg.norm(axis, axis=1)
    cos_angle = directions @ z_axis
    # Antiparallel to z: rotate by π about x (any perpendicular axis would do; x is fixed for determinism).
    degenerate = sin_angle < 1e-12
    axis[degenerate] = [1.0, 0.0, 0.0]
    sin_angle[degenerate & (cos_angle < 0)] = 0.0
    unit_axis = axis / np.linalg.norm(axis, axis=1, keepdims=True)
    k = np.zeros((len(directions), 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -unit_axis[:, 2], unit_axis[:, 1], -unit_axis[:, 0]
    k -= np.transpose(k, (0, 2, 1))
    identity = np.eye(3)[None]
    return identity + sin_angle[:, None, None] * k + (1 - cos_angle)[:, None, None] * (k @ k)


def rotation_scores(positions: np.ndarray, rotations: np.ndarray,
                    beta_per_angstrom: float = DEFAULT_BETA_PER_ANGSTROM) -> np.ndarray:
    """S (Eq. 25) for each rotation: positions (N, 3) Å, rotations (n, 3, 3) → (n,)."""
    heights = np.asarray(positions, dtype=np.float64) @ rotations[:, 2, :].T  # (N, n): z after rotation
    depth = heights.max(axis=0, keepdims=True) - heights
    return np.exp(-beta_per_angstrom * depth).sum(axis=0)


def select_rotations(positions: np.ndarray, n_keep: int = 20, n_candidates: int = DEFAULT_CANDIDATES,
                     beta_per_angstrom: float = DEFAULT_BETA_PER_ANGSTROM) -> np.ndarray:
    """The ``n_keep`` best of ``n_candidates`` rotations by Eq. 25, best first: (n_keep, 3, 3).

    Apply to a molecule with :meth:`afm_ray.molecules.Molecule.rotated`. Ties keep candidate order.
    """
    if not 1 <= n_keep <= n_candidates:
        raise ValueError(f"n_keep must be in [1, {n_candidates}], got {n_keep}")
    rotations = rotations_to_z(fibonacci_sphere(n_candidates))
    scores = rotation_scores(positions, rotations, beta_per_angstrom)
    order = np.argsort(-scores, kind="stable")[:n_keep]
    return rotations[order]
