"""vdW Spheres and Atomic Disks computed on an OpenCL device (e.g. the simulator's GPU).

:class:`DeviceMaps` gives the maps of :func:`afm_ray.descriptors.vdw_spheres` and
:func:`afm_ray.descriptors.atomic_disks` (same definitions, arguments and errors): (B, nx, ny)
float32 on a :class:`ScanWindow` in Å, x first. It shares a context and queue, e.g. a simulator's:
``DeviceMaps(simulator.context, simulator.queue)``.

What runs where: the host validates and pads the molecules (:func:`prepare_atoms`), centres them
and works out per-atom sphere radii, cone apexes and cone widths, O(atoms); the device
(``device_maps.cl``) evaluates every pixel, one work item per pixel, looping over its sample's
atoms. :meth:`DeviceMaps.maps` gets both maps from one upload, one kernel launch and one wait.
Each call returns fresh arrays. :meth:`DeviceMaps.enqueue_maps` only enqueues that work, for a
batch the simulator has loaded, so that one wait serves the whole batch; it can read the maps into
reused page-locked host arrays (:class:`afm_ray.sim.buffers.PinnedHostArrays`).

Precision: on devices with ``cl_khr_fp64`` (pocl, NVIDIA) the kernel works in float64 like NumPy;
measured on the 49-molecule QM9 sample (pocl, 128 × 128 and 32 × 32 px, random rotations) the
maps equal NumPy's to the last float32 bit (max |difference| 0 Å for both radii and both disk
modes). Without fp64 (or with ``double_precision=False``) it works in float32: measured max
|difference| 1.1e-6 for Atomic Disks and 3.3e-5 Å for vdW Spheres (20 random orientations of the
sample, 128 px); on a pixel right at a sphere's rim sqrt(R² − d²) turns the ~2e-6 Å² rounding of
R² − d² into up to ~1.5e-3 Å.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.cltypes as cltypes

from afm_ray.descriptors.disks import ATOMIC_DISKS_CUT_DEPTH, CONE_WIDTH_FACTOR, check_disk_arguments, cone_parameters
from afm_ray.descriptors.geometry import (DEFAULT_WINDOW, AtomBatch, ScanWindow, centred_on_mean_xy, padded_atom_batch,
                                         prepare_atoms)
from afm_ray.descriptors.spheres import VDW_SPHERES_CUT_DEPTH, check_sphere_arguments, sphere_radius_of
from afm_ray.errors import InputError
from afm_ray.sim.buffers import FRESH, LOCAL_SIZE, DeviceBuffers, FreshHostArrays, Pending, PinnedHostArrays, round_up
from afm_ray.sim.simulator import LoadedBatch

_DISK_MODES = {"thesis": 0, "ppafm": 1}  # the kernel's DISKS_MAX, DISKS_SUM


class DeviceMaps:
    """vdW Spheres and Atomic Disks on the device of ``queue``.

    The program is built once; device buffers are reused across calls and grow when a batch needs
    more room. ``double_precision`` None uses float64 where the device has ``cl_khr_fp64``.
    ``track(stage, event, nbytes)`` receives every enqueued command (e.g. :meth:`Simulator.track
    <afm_ray.sim.Simulator.track>`, which times them when profiling).
    """

    def __init__(self, context: cl.Context, queue: cl.CommandQueue, double_precision: bool | None = None,
                 track=None):
        self.context, self.queue = context, queue
        self._track = track or (lambda stage, event, nbytes=0: event)
        has_fp64 = "cl_khr_fp64" in queue.device.extensions.split()
        if double_precision and not has_fp64:
            raise InputError("double_precision", f"{queue.device.name.strip()} has no cl_khr_fp64")
        self.double_precision = has_fp64 if double_precision is None else double_precision
        self._real = np.float64 if self.double_precision else np.float32
        source = resources.files("afm_ray.descriptors").joinpath("device_maps.cl").read_text(encoding="utf-8")
        try:
            program = cl.Program(context, source).build(options=["-D", "DOUBLE_PRECISION"] if self.double_precision else [])
        except cl.Error as exc:
            raise RuntimeError(f"afm_ray descriptor kernels failed to build on {queue.device.name.strip()}: {exc}") from None
        self._kernel = cl.Kernel(program, "descriptor_maps")
        self._buffers = DeviceBuffers(context)

    def vdw_spheres(self, molecules: Any, window: ScanWindow = DEFAULT_WINDOW, *, radii: str = "vdw",
                    cut_depth: float = VDW_SPHERES_CUT_DEPTH, centre: bool = True) -> np.ndarray:
        """(B, nx, ny) float32 heights (Å) in ``[0, cut_depth]``, as :func:`afm_ray.descriptors.vdw_spheres`."""
        check_sphere_arguments(cut_depth)
        batch = prepare_atoms(molecules, centre)
        return self._compute(batch, window, spheres=(sphere_radius_of(radii), cut_depth))["vdw_spheres"]

    def atomic_disks(self, molecules: Any, window: ScanWindow = DEFAULT_WINDOW, *, mode: str = "thesis",
                     cut_depth: float = ATOMIC_DISKS_CUT_DEPTH, cone_width_factor: float = CONE_WIDTH_FACTOR,
                     centre: bool = True) -> np.ndarray:
        """(B, nx, ny) float32 cones, as :func:`afm_ray.descriptors.atomic_disks` (``thesis`` in Å, ``ppafm`` unitless)."""
        check_disk_arguments(mode, cut_depth, cone_width_factor)
        batch = prepare_atoms(molecules, centre)
        return self._compute(batch, window, disks=(mode, cut_depth, cone_width_factor))["atomic_disks"]

    def maps(self, molecules: Any, window: ScanWindow = DEFAULT_WINDOW, *, radii: str = "vdw",
             disks_mode: str = "thesis", centre: bool = True) -> dict[str, np.ndarray]:
        """``{"vdw_spheres": ..., "atomic_disks": ...}``, each (B, nx, ny) float32, default cut depths,
        from one upload of the atoms and one kernel launch."""
        check_disk_arguments(disks_mode, ATOMIC_DISKS_CUT_DEPTH, CONE_WIDTH_FACTOR)
        batch = prepare_atoms(molecules, centre)
        return self._compute(batch, window, spheres=(sphere_radius_of(radii), VDW_SPHERES_CUT_DEPTH),
                             disks=(disks_mode, ATOMIC_DISKS_CUT_DEPTH, CONE_WIDTH_FACTOR))

    def enqueue_maps(self, batch: LoadedBatch, window: ScanWindow = DEFAULT_WINDOW, *, radii: str = "vdw",
                     disks_mode: str = "thesis", host: FreshHostArrays | PinnedHostArrays = FRESH
                     ) -> Pending[dict[str, np.ndarray]]:
        """:meth:`maps` of a batch the simulator has loaded (atoms centred on their mean xy), enqueued on
        :attr:`queue` without waiting; the maps are read into ``host``'s arrays."""
        check_disk_arguments(disks_mode, ATOMIC_DISKS_CUT_DEPTH, CONE_WIDTH_FACTOR)
        atoms = centred_on_mean_xy(padded_atom_batch(*batch.atoms()))
        return self._enqueue(atoms, window, spheres=(sphere_radius_of(radii), VDW_SPHERES_CUT_DEPTH),
                             disks=(disks_mode, ATOMIC_DISKS_CUT_DEPTH, CONE_WIDTH_FACTOR), host=host)

    def release(self) -> None:
        """Free device buffers now (they are otherwise freed with this object)."""
        self._buffers.release()

    def _compute(self, batch: AtomBatch, window: ScanWindow, spheres: tuple | None = None,
                 disks: tuple | None = None) -> dict[str, np.ndarray]:
        pending = self._enqueue(batch, window, spheres, disks)
        self.queue.finish()
        return pending.result()

    def _enqueue(self, batch: AtomBatch, window: ScanWindow, spheres: tuple | None = None, disks: tuple | None = None,
                 host: FreshHostArrays | PinnedHostArrays = FRESH) -> Pending[dict[str, np.ndarray]]:
        """Maps for ``spheres = (radius_of, cut_depth)`` and/or ``disks = (mode, cut_depth, cone_width_factor)``."""
        columns = np.zeros((*batch.mask.shape, 8))  # the kernel's atoms[i], before dropping padding
        columns[..., :3] = batch.positions
        if spheres is not None:
            columns[..., 3] = batch.per_atom(spheres[0])
        if disks is not None:
            visible, apex, columns[..., 5] = cone_parameters(batch, *disks)
            columns[..., 4] = np.where(visible, apex, 0.0)  # apex 0: the kernel draws no cone
        counts = batch.mask.sum(axis=1)
        atom_range = np.column_stack([np.cumsum(counts) - counts, counts]).astype(np.int32)
        atoms = np.ascontiguousarray(columns[batch.mask], self._real)
        count, nxy = batch.batch_size, window.nx * window.ny
        # the events hold the host arrays until the copies have run (dropping one would wait for it)
        events = [self._track("upload", cl.enqueue_copy(self.queue, self._buffers.at_least(name, array.nbytes), array,
                                                        is_blocking=False), array.nbytes)
                  for name, array in (("atoms", atoms), ("atom_range", atom_range))]
        wanted = [name for name, request in (("vdw_spheres", spheres), ("atomic_disks", disks)) if request is not None]
        outputs = {name: self._buffers.at_least(name, count * nxy * 4) for name in wanted}
        make_real4 = cltypes.make_double4 if self.double_precision else cltypes.make_float4
        (dx, dy), real = window.pixel_size, self._real
        self._kernel.set_args(self._buffers["atoms"], self._buffers["atom_range"],
                              make_real4(window.x_min, window.y_min, dx, dy), np.int32(window.nx), np.int32(window.ny),
                              real(spheres[1] if spheres else 0.0), np.int32(_DISK_MODES[disks[0]] if disks else 0),
                              outputs.get("vdw_spheres"), outputs.get("atomic_disks"))
        self._track("maps kernel", cl.enqueue_nd_range_kernel(self.queue, self._kernel, (round_up(nxy), count),
                                                              (LOCAL_SIZE, 1)))
        results = {name: host.empty(name, (count, window.nx, window.ny)) for name in wanted}
        events += [self._track("read maps", cl.enqueue_copy(self.queue, result, outputs[name], is_blocking=False),
                               result.nbytes) for name, result in results.items()]
        return Pending(events, lambda: results)
