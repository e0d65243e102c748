"""Making training samples: which batches an epoch holds, their seeds, the augmentation, and the batch maker.

* :mod:`~afm_ray.samples.plan` — the deterministic epoch plan: ``(run seed, epoch, batch)`` → a batch's work.
* :mod:`~afm_ray.samples.augment` — the thesis' augmentation chain in NumPy (section 3.4).
* :mod:`~afm_ray.samples.augment_torch` — the same chain on the trainer's torch device.
* :mod:`~afm_ray.samples.batches` — one simulated, described and augmented batch per call.
* :mod:`~afm_ray.samples.sample_batch` — :class:`~afm_ray.samples.sample_batch.SampleBatch`, the batch every
  batch maker returns (arrays, their shapes and units, skipped samples, timings).

No Ray here: the pipeline's actors call these modules.
"""
