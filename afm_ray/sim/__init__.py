"""Probe Particle Model AFM simulator in OpenCL (thesis 3.1, 3.4; Eqs. 1, 5).

One molecule in three lines, no Ray needed::

    from afm_ray.sim import Simulator, SimConfig
    sim = Simulator(SimConfig())                # compiles the kernels once; device="cpu"/"gpu"/… optional
    df = sim.simulate([molecule], tip="CO")     # (1, 128, 128, 20) float32, Hz

``molecule`` is an :class:`afm_ray.molecules` ``Molecule`` (``.numbers`` (N,), ``.positions`` (N, 3) Å,
``.charges`` (N,) e) or an ``ase.Atoms`` (charges from ``get_initial_charges()``). Batches are one
call: ``sim.run(molecules, tip, scan_params=None, seed=None)`` returns a :class:`SimulationResult`
with the stacks and everything needed to reproduce or compare them (windows, heights, tilts, seeds).

Output axes and units
---------------------
``df[b, i, j, k]`` is the frequency shift in Hz of sample ``b`` at pixel x_i, y_j (x is the first
axis: transpose for ``imshow``) and slice k, slices ordered **far → close** (k = 0 is the highest
tip). Pixel centres: ``window_origin + (i + 0.5)·pixel_size`` with the window (16 × 16 Å) centred
on the molecule's mean atom (x, y). Heights: ``SimulationResult.slice_tip_z[b, k]`` is the tip-anchor
height (Å, molecule frame) at the centre of slice k's oscillation; the probe hangs 4 Å below it.

Physics
-------
* Probe–sample: Lennard-Jones with the element table's OPLS parameters, mixed R_ij = R_i + R_j,
  ε_ij = √(ε_i ε_j), E = ε_ij((R_ij/r)¹² − 2(R_ij/r)⁶), plus Coulomb k_e q_i Q / r between the
  sample's point charges and the probe's charge(s) (k_e = 14.399644 eV·Å/e²). Tips (``SimConfig.tips``):
  CO = O probe with −0.1 e (monopole; ``multipole="quadrupole"`` gives ppafm's d_z² point charges),
  Xe with +0.3 e.
* Probe–tip: lateral springs 0.25, 0.25 N/m about the rest offset and a radial spring 30 N/m of rest
  length 4.0 Å (1 N/m = 0.0624150907 eV/Å²; the published data generators' value, see :mod:`afm_ray.sim.config`). The rest offset (x, y) is drawn per sample uniformly in a
  disk of ``tilt_radius_angstrom`` (thesis: 1.0 Å) from the SplitMix64 stream of the sample's own
  seed (a whole batch's draws are a few NumPy operations); the seed is recorded in its :class:`ScanParams`.
* Scan: the tip anchor starts ``start_distance_angstrom`` (6.0) above the probe–atom contact height
  (see :mod:`afm_ray.sim.config`) and descends ``num_slices + df_steps`` steps of dz = 0.1 Å. At each
  height the probe is relaxed starting from the previous height's displacement (carried down the
  approach, as in the thesis), and Fz of the sample on the probe is recorded.
* Relaxation: damped Newton on the total energy with the analytic 3 × 3 Hessian: a Cholesky solve,
  shifted by the (closed-form) smallest eigenvalue wherever the Hessian is not positive definite so
  every step goes downhill and moves fast along soft modes near snap instabilities; a 0.1 Å trust
  radius; steps that raise the energy are halved (no cycling around saddles); stop at
  |F_total| < 1e-4 eV/Å (ppafm's FIRE criterion) within ``relax_max_iterations``. It needs ~1.5–1.8
  force+Hessian evaluations per height on average, against FIRE's tens to 128.
  ``SimulationResult.unconverged`` counts relaxations that hit the cap; ``run(...,
  return_probe_positions=True)`` returns the relaxed probe positions and iterations per relaxation.
  Where the probe sits on an exact symmetry (e.g. CO right above the centre of a perfectly planar,
  centred benzene at close approach) the branch it slides into is decided by round-off, in any
  simulator; rotated samples do not hit such points.
* Forces come straight from the atoms (no 0.1 Å force-field grid as in ppafm): exact forces, no
  grid build per sample, and no grid edge or periodic wrap the probe could wander into.
* Δf by Giessibl's formula (Eq. 5): Δf(z_c) = f0/(π k A²) ∫ Fz(z_c − q) q/√(A² − q²) dq over
  [−A, A], with peak-to-peak 2A = df_steps·dz (1.0 Å), f0 = 30.3 kHz, k = 1800 N/m; each slice
  integrates the df_steps + 1 Fz samples of its oscillation, Fz piecewise linear between samples,
  each segment integrated exactly (:func:`giessibl_weights`). ppafm's kernel at the same df_steps is
  ~10 % smaller with an effective amplitude ~0.84 Å; both agree as ppafm's z sampling is refined.

Rejected input (:class:`afm_ray.errors.InputError`): a molecule with no atoms, non-finite positions
or charges, unknown elements, a molecule wider than the scan window, a scan whose lowest probe rest
position comes within ``min_clearance_angstrom`` (1.8 Å) of the highest nucleus' height, an unknown tip.

For descriptors (Height Map, Electrostatic Map)
-----------------------------------------------
``Simulator.rigid_probe_fields(molecules, z_planes_angstrom, tip="CO", relative_to="top_atom")``
returns ``(fz, potential)``, each (B, nx, ny, nz) float32 on the same pixel grid as the stacks:
``fz`` (eV/Å) is the z force of the total force field (LJ + Coulomb with the tip's charges) on a
rigid probe at (x_i, y_j, z_k), ``potential`` (V) the sample's point-charge potential Σ k_e q_i / r
there. ``z_planes_angstrom`` (nz,) are heights above each molecule's highest nucleus (or absolute z
with ``relative_to="absolute"``). ``Simulator.electrostatic_potential_on_surface(molecules,
heights (B, nx, ny))`` gives the potential (V) on one surface, e.g. the Height Map.
``Simulator.pixel_centres(molecule)`` gives the x, y pixel coordinates (Å).

Several computations on one batch, one wait
-------------------------------------------
Each method above is one synchronous call. A simulation actor instead packs and uploads a batch's
atoms once, ``batch = sim.load(molecules)`` (a :class:`LoadedBatch`), enqueues everything on the
simulator's queue back to back, ``sim.enqueue_run(batch, "CO", df_out=df, df_channel=0)``,
``sim.enqueue_iso_surface(batch, …)`` (and :meth:`afm_ray.descriptors.device_maps.DeviceMaps.enqueue_maps`),
waits once, ``sim.finish()``, and then takes each returned :class:`~afm_ray.sim.buffers.Pending`'s
``.result()``. ``df_out`` (B, C, nx, ny, n_slices) receives each tip's Δf at its channel straight
from the device; ``host=PinnedHostArrays(sim.queue)`` reads results into reused page-locked memory.

Devices: ``afm_ray.sim.device.select_device`` (``"auto"``, ``"cpu"``, ``"gpu"``, ``"nvidia:<N>"``, index, name).
"""

from afm_ray.sim.config import SimConfig, TipConfig
from afm_ray.sim.simulator import (DeviceProfile, LoadedBatch, ScanParams, SimulationResult, Simulator, draw_scan_params,
                                   giessibl_weights)

__all__ = ["DeviceProfile", "LoadedBatch", "SimConfig", "TipConfig", "ScanParams", "SimulationResult", "Simulator",
           "draw_scan_params", "giessibl_weights"]
