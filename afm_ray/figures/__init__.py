"""Matplotlib figures drawn from arrays, model specs and plain data (never from training or prediction objects).

* :mod:`~afm_ray.figures.scans` — the shared drawing helpers: AFM slices, descriptor maps, molecules, saving.
* :mod:`~afm_ray.figures.metrics` — the thesis' metric figures (error histograms, precision/recall).
* :mod:`~afm_ray.figures.training` — predicted vs reference descriptors of a validation or test batch.
* :mod:`~afm_ray.figures.predictions` — one prediction (or experiment match) per figure.

Figures need matplotlib only, not a display: every module draws on an Agg canvas.
"""
