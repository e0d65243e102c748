"""The per-worker training loop run by Ray Train (one process per DDP rank), in parts.

Each optimiser step trains one *global* batch (``run.batch_size`` samples, all ranks together): each
rank trains its pieces of it (:func:`rank_steps`, :class:`~afm_ray.train.step.StepRunner`), so the
recipe, and the learning rate per sample seen (:class:`~afm_ray.train.optim.SampleSchedule`), do not depend
on the number of ranks. Each rank pulls its pieces from the simulation actors through one
:class:`~afm_ray.pipeline.BatchStream` that lasts the whole run, via a background loader that prepares
them on the device ahead of the step (:func:`train_epoch`, :mod:`afm_ray.train.loader`); the next epochs'
batches are requested while this epoch ends, validates and checkpoints (:meth:`RankRun.request`).
Every rank then validates its shard of the fixed validation set (:mod:`afm_ray.train.validation`); the
shares are combined into one evaluation equal to a single-rank one, training figures are summed over all
ranks, and the data figures say what the most starved rank saw (:mod:`afm_ray.train.epoch_metrics`). Rank 0
reports each epoch with its checkpoint (:class:`~afm_ray.train.checkpointing.TrainingState`); the controller
logs each report to MLflow once the checkpoint is saved
(:class:`~afm_ray.train.mlflow_callback.MlflowReportCallback`). A restarted worker group resumes from the
latest checkpoint (:meth:`RankRun.start`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import ray.train

from afm_ray.pipeline import BatchSpec, BatchStream, plan_epoch
from afm_ray.pipeline.fixed_sets import FixedSet, available_memory_bytes, cache_budget_mib
from afm_ray.recipe import TrainConfig
from afm_ray.samples.plan import micro_batches_for_rank
from afm_ray.train.checkpointing import TrainingState
from afm_ray.train.configured_model import build_loss, gathered_from_ranks, objective
from afm_ray.train.device_shard import DeviceShard
from afm_ray.train.epoch_metrics import data_metrics, epoch_metrics, stream_delta, summed, with_best_flag
from afm_ray.train.loader import StepLoader
from afm_ray.train.network import prepare_network
from afm_ray.train.optim import build_optimizer
from afm_ray.train.step import LossSums, StepRunner
from afm_ray.train.validation import evaluate, validation_source


def rank_steps(config: TrainConfig, n_train: int, epoch: int, rank: int, world_size: int,
               raw_df: bool) -> list[list[BatchSpec]]:
    """This rank's micro batches of each optimiser step of ``epoch``, in plan order. ``raw_df``: the actors ship
    raw Δf for augmentation on the trainer, slimmed as ``pipeline.raw_df_dtype`` / ``target_dtype`` /
    ``raw_df_slices`` say."""
    steps = micro_batches_for_rank(plan_epoch(n_train, config.run.batch_size, config.run.seed, epoch), rank,
                                   world_size, config.micro_batches_per_step)
    if not raw_df:
        return steps
    pipeline = config.pipeline
    slim = {"raw_df": True, "raw_df_dtype": pipeline.raw_df_dtype, "target_dtype": pipeline.target_dtype,
            "raw_df_read_slices": pipeline.raw_df_slices == "read"}
    return [[dataclasses.replace(spec, **slim) for spec in step] for step in steps]


def train_epoch(runner: StepRunner, stream: BatchStream, steps: list[list[BatchSpec]]) -> dict[str, float]:
    """Train this rank's ``steps`` of one epoch from ``stream`` (their batches already requested); returns the
    rank's share of the epoch's figures: the loss sums (:class:`~afm_ray.train.step.LossSums`), ``trained``
    samples, the stream's figures over the epoch (:func:`~afm_ray.train.epoch_metrics.stream_delta`),
    ``loop_wait_seconds`` (the loop's own wait for prepared batches), ``max_wait_seconds`` (the longest wait for
    one batch) and ``elapsed`` (s)."""
    config = runner.config
    stream.stats.max_wait_seconds = 0.0
    before = stream.stats.copy()
    runner.model.train()
    runner.sums = LossSums()
    started = time.perf_counter()
    # in plan order, so that the ranks' pieces of one global batch meet in one synchronised step; batches
    # that arrive early wait in the stream and count against its in-flight bound
    loader = StepLoader(stream.results, steps, runner.device, config.augment, config.sim.num_slices,
                        depth=config.run.loader_depth)
    trained = sum(runner.run(micro_batches) for micro_batches in loader)
    return {**runner.sums.read(), "trained": float(trained), **stream_delta(stream.stats, before),
            "loop_wait_seconds": loader.times.wait_seconds, "max_wait_seconds": stream.stats.max_wait_seconds,
            "elapsed": time.perf_counter() - started}


@dataclass
class RankRun:
    """What one rank builds once for the whole run (:meth:`start`), and its epochs (:meth:`run_epoch`)."""

    config: TrainConfig
    config_json: str
    rank: int
    world_size: int
    ranks_on_node: int
    n_train: int
    state: TrainingState
    runner: StepRunner
    stream: BatchStream
    val_set: FixedSet
    raw_df: bool
    start_epoch: int
    history: list[dict[str, float]]
    validation: FixedSet | DeviceShard | None = None

    @classmethod
    def start(cls, loop_config: dict) -> "RankRun":
        """Build this rank's model, optimiser, stream and validation set in its Ray Train worker, resumed from
        Ray Train's latest checkpoint where there is one. ``loop_config``: ``config_json``, ``pool``, ``tenant``,
        ``val_path``, ``n_train_samples`` (:func:`afm_ray.train.trainer.run_training`)."""
        config = TrainConfig.model_validate_json(loop_config["config_json"])
        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
        ranks_on_node = context.get_local_world_size()
        device = ray.train.torch.get_device()
        model, memory_channels_last = prepare_network(config, device)
        settings = config.optimizer
        optimizer, schedule = build_optimizer(
            model.parameters(), settings.learning_rate, settings.decay, (settings.beta1, settings.beta2),
            global_batch_size=config.run.batch_size, reference_batch_size=settings.reference_batch_size,
            warmup_samples=settings.warmup_samples, batch_scaling=settings.batch_scaling)
        state = TrainingState(model, optimizer, schedule, (settings.beta1, settings.beta2))
        start_epoch, history = state.restore(ray.train.get_checkpoint(), device)
        cache_mib = config.data.fixed_set_cache_mib
        if cache_mib is None:
            cache_mib = cache_budget_mib(available_memory_bytes(), ranks_on_node)
        pipeline = config.pipeline
        stream = BatchStream(loop_config["pool"], max_in_flight=pipeline.max_in_flight_per_worker, consumer=rank,
                             consumers=world_size, tenant=loop_config["tenant"],
                             budget_mib=pipeline.object_store_budget_mib_per_worker,
                             max_attempts=pipeline.max_attempts_per_batch, seed=config.run.seed)
        runner = StepRunner(model, optimizer, schedule, build_loss(config), config, device, world_size,
                            memory_channels_last)
        return cls(config, loop_config["config_json"], rank, world_size, ranks_on_node,
                   loop_config["n_train_samples"], state, runner, stream,
                   FixedSet(loop_config["val_path"], cache_mib=cache_mib),
                   raw_df=pipeline.augment_on == "trainer"
                   or (pipeline.augment_on == "auto" and config.scaling.use_gpu),
                   start_epoch=start_epoch, history=history)

    def steps(self, epoch: int) -> list[list[BatchSpec]]:
        return rank_steps(self.config, self.n_train, epoch, self.rank, self.world_size, self.raw_df)

    def request(self, epoch: int) -> list[list[BatchSpec]]:
        """Ask the pool for ``epoch``'s batches, then (``pipeline.prefetch_next_epoch``) the next two epochs' queued
        behind them: a short epoch's successor alone may be made before a long validation ends, and the pool makes
        them within the rank's object-store budget while it validates. Returns ``epoch``'s steps."""
        steps = self.steps(epoch)
        self.stream.request([spec for step in steps for spec in step])
        last = min(epoch + 3, self.config.run.epochs) if self.config.pipeline.prefetch_next_epoch else epoch + 1
        for ahead in range(epoch + 1, last):
            self.stream.request([spec for step in self.steps(ahead) for spec in step])
        return steps

    def validate(self) -> dict[str, float]:
        """The ``val_*`` figures of the model on the validation set, combined over ranks, and ``validation_seconds``."""
        started = time.perf_counter()
        if self.validation is None:  # measured now: the first epoch has claimed the device memory training needs
            self.validation = validation_source(self.val_set, self.config, self.runner.device, self.rank,
                                                self.world_size, self.ranks_on_node)
        evaluation = evaluate(self.runner.model, self.runner.loss_fn, self.config, self.validation, self.runner.device,
                              self.rank, self.world_size).combined_over_ranks()
        return {**evaluation.result("val"), "validation_seconds": time.perf_counter() - started}

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train, validate and report ``epoch`` (rank 0 with the checkpoint); returns the reported figures."""
        shares = gathered_from_ranks(train_epoch(self.runner, self.stream, self.request(epoch)))
        total = summed(shares)
        if total["trained"] == 0:
            raise RuntimeError(f"epoch {epoch}: no training batch arrived on any rank ({self.n_train} samples, global "
                               f"batch {self.config.run.batch_size}, {self.world_size} ranks); see the log for "
                               "dropped batches")
        metrics = {**epoch_metrics(total, self.config, epoch, self.world_size, self.state.schedule),
                   **data_metrics(shares, self.config.pipeline.num_sim_actors), **self.validate()}
        self.history.append({name: float(value) for name, value in metrics.items()})
        metrics = with_best_flag(self.history[-1], self.history, *objective(self.config))
        self.state.report(self.rank, metrics, epoch, self.config_json, self.history)
        return metrics


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's function on every rank: the run's remaining epochs, from the latest checkpoint if any."""
    rank_run = RankRun.start(loop_config)
    try:
        for epoch in range(rank_run.start_epoch, rank_run.config.run.epochs):
            rank_run.run_epoch(epoch)
    finally:
        rank_run.stream.close()
