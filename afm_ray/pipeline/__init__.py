"""The distributed data pipeline: GPU-pinned simulation actors → Ray object store → Ray Train workers.

Training data is simulated on the fly: every epoch re-simulates the training split with fresh
tilts, heights and noise. The expensive part of a simulator is its set-up (OpenCL context,
kernel compilation, device buffers), so it must live as long as the run.

Design: our own stream, measured against Ray Data
-------------------------------------------------
afm-ray uses long-lived **simulation actors** (:mod:`afm_ray.pipeline.actors`), each pinned by
``num_gpus`` (fractional allowed) and/or a custom resource to a simulation GPU (CPU OpenCL where
there is none), and each training worker **pulls** its own batches with a bounded number of
in-flight ``make_batch`` calls (:class:`~afm_ray.pipeline.stream.BatchStream`). Consumer ``c`` of
``W`` sends work to its own actors ``c, c + W, …`` (balanced by their true load, which only it
creates), falls back to the others when those fail, and keeps ``max(4, 2⌈N/W⌉)`` batches in
flight, so every actor has a batch queued behind the one it makes. The results are ordinary task
returns owned by the consumer (they survive the actor), and a consumer never holds more than its
in-flight bound of them (backpressure by construction). Failed or overdue calls are re-sent to
another actor a bounded number of times, then dropped and reported (see the stream's module doc).

Both designs were measured in one session with fixed-latency actors (0.2 s per batch, no CPU),
real Ray 2.60 and real consumer processes on a 2-core machine (``afm-ray bench pipeline
--synthetic``, 40 batches per actor; ``benchmarks/ray_data_stream.py``, 20), as batches/s against
the ideal, ``min(actors, consumers × in-flight) / latency`` for the streams and ``actors / latency``
for Ray Data (which has no in-flight bound):

==================  =====================  =====================  ====================  ==================
actors × consumers  before: each consumer  afm-ray stream now     Ray Data              Ray Data, rows
                    balanced by own count  (home actors)          ``streaming_split``   materialised first
==================  =====================  =====================  ====================  ==================
32 × 8              12 %, 4 of 32 actors   92–94 %, 32 of 32      11 %, 17 of 32        37 %, 32 of 32
64 × 4              6 %, 4 of 64 actors    94–97 %, 64 of 64      5 %, 18 of 64         19 %, 64 of 64
4 × 8               97 %                   95–98 %                55 %                  79 %
==================  =====================  =====================  ====================  ==================

("before" is the rate against all actors' 1 / latency each, with its default in-flight of 4. Now
every actor makes exactly the mean share of the batches, and each batch arrives exactly once.)
Ray Data (``map_batches`` over an ``ActorPoolStrategy`` pool, ``streaming_split(W, equal=True)``)
is limited on this machine by its own per-task scheduling (about 60 batches/s through
``streaming_split`` whatever the pool size), and it **recreated the whole actor pool for the
second epoch** (no actor process of epoch 1 made a row of epoch 2; 46 s between epochs, almost all
of it pool start-up), which for us would mean rebuilding every OpenCL context and kernel each
epoch. It also targets bounded datasets rather than an endless stream. A Ray queue of object refs
was rejected earlier: it is one actor (a single point of failure), and refs ``ray.put`` by a
producer die with it. So the stream stays ours: about 300 lines.

Work is planned deterministically (:mod:`afm_ray.plan`): ``(run seed, epoch, batch)`` fixes every
random draw, so the next epoch's batches can be requested while this one validates and
checkpoints. Validation and test sets are simulated once and stored as Parquet shards
(:mod:`afm_ray.pipeline.fixed_sets`), so every run and trial sees identical samples. This package
reads only its own settings (:mod:`afm_ray.pipeline.settings`), never the training config.
"""

from afm_ray.pipeline.settings import DataSettings, PipelineSettings, SampleSettings
from afm_ray.plan import BatchSpec, batches_for_rank, plan_epoch

__all__ = ["BatchSpec", "BatchStream", "DataSettings", "PipelineSettings", "SampleSettings", "StreamStats",
           "batches_for_rank", "plan_epoch"]


def __getattr__(name: str):
    # the stream imports Ray: only code that streams pays for it (the settings are imported by every config)
    if name in ("BatchStream", "StreamStats"):
        from afm_ray.pipeline import stream

        return getattr(stream, name)
    raise AttributeError(f"module 'afm_ray.pipeline' has no attribute {name!r}")
