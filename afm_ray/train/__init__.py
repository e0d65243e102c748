"""Training: Ray Train workers (DDP) fed by the simulation pipeline, checkpoints and the run folder, the MLflow
run, and the model registered at the end (:func:`afm_ray.train.trainer.run_training`)."""
