"""The distributed data pipeline: GPU-pinned simulation actors → Ray object store → Ray Train workers.

Training data is simulated on the fly: every epoch re-simulates the training split with fresh
tilts, heights and noise. The expensive part of a simulator is its set-up (OpenCL context,
kernel compilation, device buffers), so it must live as long as the run.

Design: one pool with one dispatcher, measured against static actor sets and Ray Data
-----------------------------------------------------------------------------------
afm-ray uses long-lived **simulation actors** (:mod:`afm_ray.pipeline.actors`), each pinned by
``num_gpus`` (fractional allowed) and/or a custom resource to a simulation GPU (CPU OpenCL where
there is none). They form one **pool** served by one **dispatcher**
(:mod:`afm_ray.pipeline.dispatcher`, an async Ray actor; its rules in
:mod:`afm_ray.pipeline.dispatch`): every training worker, of every run or Tune trial sharing the
pool, queues its batches there through a :class:`~afm_ray.pipeline.stream.BatchStream`, and
whichever actor frees up makes the next batch, for any worker. The dispatcher makes the calls, so
it owns the results: a batch survives the death of the actor that made it, and the worker fetches
it straight from the actor's node. Failed, slow (hedged) and overdue calls are tried elsewhere a
bounded number of times, then dropped and reported.

Two designs were measured with the real Ray 2.60 and lock-step consumers (a round ends when every
consumer has its batch, as DDP ranks step), batches/s as a share of the pool's capacity (the summed
rate of the live actors), and a third was weighed:

* **static home actors** (afm-ray 0.1): consumer ``c`` of ``W`` sent to actors ``c, c + W, …`` and
  left them only when all had failed. Every actor busy when actors are alike; but DDP ranks step
  together, so the job ran at the pace of the slowest home set.
* **work stealing between the consumers' queues** was rejected without building it: a consumer
  only sees the load it creates, so stealing needs each actor's true queue, which costs a round
  trip per decision to every actor (or a shared board, i.e. a dispatcher), and fair shares between
  concurrent trials need a global view anyway.
* **one dispatcher** (now): a central queue, so an actor is given a batch only when it has a free
  slot, which is work-conserving by construction; fair shares and cancellation of a stopped
  trial's work are one decision in one place; its policy is plain Python, tested under a virtual
  clock (``tests/unit/pipeline/test_dispatch.py``). Its cost is one more hop per batch (a few ms, not the batch's
  bytes) and a single actor, restarted after a crash, whose consumers then re-request what they
  had not received.

=====================================================  ==================  ==================  ===================
layout (actors × lock-step consumers)                  static home actors  one dispatcher      one dispatcher, 1 s
=====================================================  ==================  ==================  ===================
32 × 8, alike                                          90 %                85 %                96 %
64 × 4, alike                                          76 %                88 %                96 %
32 × 8, every 4th actor 2× slower                      50 %                89 %                93 %
64 × 8, the 8 slow actors of one old home set          47 %                85 %                91 %
32 × 8, one actor dead (failing fast) from the start   67 %                86 %                98 %
32 × 8, one actor killed halfway                       68 %                88 %                98 %
2 trials × 4 consumers on 32 actors (each trial)       84 % (43 % / 44 %)  88 % (44 % / 47 %)  98 % (51 % / 49 %)
=====================================================  ==================  ==================  ===================

(``afm-ray bench pipeline --synthetic`` on a quiet 2-core machine; the first two columns at 0.2 s per batch,
where the machine's two cores bound both designs (up to 320 calls/s through one dispatcher); the last at
``--latency 1.0``, where they no longer do. Dead and killed: share of the live actors' capacity. Under a
virtual clock the policy reaches ≥ 90 % on every uneven layout, ``tests/unit/pipeline/test_dispatch.py``.)

Earlier, with alike actors, Ray Data (``map_batches`` over an ``ActorPoolStrategy`` pool,
``streaming_split(W, equal=True)``; ``afm-ray bench ray-data-stream``) reached 11 % of the ideal at
32 × 8 and 5 % at 64 × 4: it was limited by its own per-task scheduling (about 60 batches/s through
``streaming_split`` whatever the pool size) and it **recreated the whole actor pool for the second
epoch** (46 s between epochs, almost all of it pool start-up), which for us would mean rebuilding
every OpenCL context and kernel each epoch. A Ray queue of object refs was rejected earlier: refs
``ray.put`` by a producer die with it.

Work is planned deterministically (:mod:`afm_ray.samples.plan`): ``(run seed, epoch, batch)`` fixes every
random draw, so the next epoch's batches can be requested while this one validates and
checkpoints. Validation and test sets are simulated once and stored as Parquet shards
(:mod:`afm_ray.pipeline.fixed_sets`), so every run and trial sees identical samples. This package
reads only its own settings (:mod:`afm_ray.pipeline.settings`), never the training config.
"""

import importlib

from afm_ray.samples.plan import BatchSpec, batches_for_rank, plan_epoch

__all__ = ["BatchSpec", "BatchStream", "DataSettings", "PipelineSettings", "SampleSettings", "StreamStats",
           "batches_for_rank", "plan_epoch"]

_LAZY = {"BatchStream": "stream", "StreamStats": "stream",
         "DataSettings": "settings", "PipelineSettings": "settings", "SampleSettings": "settings"}


def __getattr__(name: str):
    # Importing any submodule runs this package first, and every process of the pool imports one: the
    # dispatcher actor needs neither Ray's stream client nor the settings, whose model specs import torch
    # (seconds of CPU per process). Only code that names them pays for them.
    if name in _LAZY:
        return getattr(importlib.import_module(f"afm_ray.pipeline.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'afm_ray.pipeline' has no attribute {name!r}")
