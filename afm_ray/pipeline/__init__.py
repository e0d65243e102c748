"""The distributed data pipeline: GPU-pinned simulation actors → Ray object store → Ray Train workers.

Design (and why not Ray Data)
-----------------------------
Training data is simulated on the fly: every epoch re-simulates the training split with fresh
tilts, heights and noise. The expensive part of a simulator is its set-up (OpenCL context,
kernel compilation, device buffers), so it must live as long as the run.

* **Ray Data** (``map_batches`` with an actor pool) re-executes the pipeline on each pass over a
  shard and recreates the actor pool every epoch, so kernels would be rebuilt per epoch, and it
  targets bounded datasets rather than an endless stream (Ray maintainers' position; see
  ``RAY-NOTES.md``). A "virtual epoch" work-around hides epoch boundaries from Ray Train.
* **A Ray queue of object refs** is one actor (a single point of failure), and refs created by
  ``ray.put`` inside a producer die with it (``OwnerDiedError``).

So afm-ray uses long-lived **simulation actors** (:mod:`afm_ray.pipeline.actors`), each pinned by
``num_gpus`` (fractional allowed) and/or a custom resource to a simulation GPU (CPU OpenCL where
there is none), and each training worker **pulls** its own batches with a bounded number of
in-flight ``make_batch`` calls (:class:`~afm_ray.pipeline.stream.BatchStream`). The results are
ordinary task returns owned by the consumer, travelling through Ray's object store; a consumer
never holds more than ``max_in_flight`` of them (backpressure by construction). Actors restart
after a crash and calls are retried, so every planned batch is delivered exactly once.
Work is planned deterministically (:mod:`afm_ray.pipeline.work`): ``(run seed, epoch, batch)``
fixes every random draw. Validation and test sets are simulated once and stored as Parquet
shards (:mod:`afm_ray.pipeline.fixed_sets`), so every run and trial sees identical samples.
"""

from afm_ray.pipeline.stream import BatchStream, StreamStats
from afm_ray.pipeline.work import BatchSpec, batches_for_rank, plan_epoch

__all__ = ["BatchSpec", "BatchStream", "StreamStats", "batches_for_rank", "plan_epoch"]
