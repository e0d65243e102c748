"""The per-worker training loop run by Ray Train (one process per DDP rank).

Each optimiser step trains one *global* batch (``run.batch_size`` samples, all ranks together): each
rank trains its pieces of it (:func:`~afm_ray.samples.plan.micro_batches_for_rank`, :class:`StepRunner`), so the
recipe, and the learning rate per sample seen (:class:`~afm_ray.train.optim.SampleSchedule`), do not depend
on the number of ranks. Each rank pulls its pieces from the simulation actors through one
:class:`~afm_ray.pipeline.BatchStream` that lasts the whole run, via a background loader that prepares
them on the device ahead of the step (:mod:`afm_ray.train.loader`); the next epoch's batches are
requested while this epoch ends, validates and checkpoints (``pipeline.prefetch_next_epoch``).
Every rank then validates its shard of the fixed validation set; the shares are combined into
one evaluation equal to a single-rank one, training figures are summed over all ranks, and the
data figures say what the most starved rank saw (:func:`data_metrics`). Rank 0
writes the checkpoint (state dicts of model, optimiser and scheduler, epoch and config; history as
JSON; read back with ``weights_only=True``); the controller logs each report to MLflow once the
checkpoint is saved (:class:`~afm_ray.train.mlflow_callback.MlflowReportCallback`).
A restarted worker group resumes from the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import torch
from ray.train import Checkpoint

from afm_ray.errors import InputError
from afm_ray.models.memory_format import channels_last, channels_last_is_faster, to_channels_last
from afm_ray.train.optim import SampleSchedule, build_optimizer, restore_optimizer
from afm_ray.pipeline import BatchSpec, BatchStream, StreamStats, plan_epoch
from afm_ray.samples.plan import micro_batches_for_rank
from afm_ray.pipeline.fixed_sets import FixedSet, available_memory_bytes, cache_budget_mib
from afm_ray.recipe import TrainConfig
from afm_ray.registry.checkpoints import CHECKPOINT_FILE, HISTORY_FILE, read_checkpoint_state
from afm_ray.train.device_shard import DeviceShard, free_device_bytes
from afm_ray.train.loader import DeviceBatch, StepLoader
from afm_ray.train.configured_model import (Evaluation, build_loss, compute_loss, evaluation_for, forward,
                                 gathered_from_ranks, objective, to_tensors)

def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside torch.compile's and DDP's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


def prepare_network(config: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """(the model to train: the network on ``device``, DDP-wrapped where there are ranks, compiled where
    ``run.compile``; whether it is channels-last). ``run.channels_last: auto`` measures this device."""
    last = config.run.channels_last
    if last == "auto":  # rank 0's measurement for all: DDP needs the same parameter strides on every rank
        sample = torch.randn(2, len(config.model.spec.tips), *config.sim.scan_pixels, config.input_slices,
                             device=device)
        last = gathered_from_ranks(channels_last_is_faster(config.build_network, sample))[0]
    torch.manual_seed(config.run.seed)  # the same initial weights whatever the measurement drew
    network = config.build_network()
    model = ray.train.torch.prepare_model(to_channels_last(network) if last else network)
    return compiled(model, config), last


def compiled(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """``model`` inside ``torch.compile`` with ``run.compile_backend`` where ``run.compile``, else itself."""
    if not config.run.compile:
        return model
    check_compile_backend(config)
    return torch.compile(model, backend=config.run.compile_backend)


def check_compile_backend(config: TrainConfig) -> None:
    """Refuses a ``run.compile_backend`` torch does not know (checked by the driver before any work)."""
    if not config.run.compile:
        return
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if config.run.compile_backend not in known:
        raise InputError("run.compile_backend", f"{config.run.compile_backend!r} is not a torch.compile backend "
                                                f"(known: {', '.join(sorted(known))})")


def validation_source(val_set: FixedSet, config: TrainConfig, device: torch.device, rank: int, world_size: int,
                      ranks_on_node: int) -> FixedSet | DeviceShard:
    """What a rank validates on: its shard kept on ``device`` where ``run.val_shard_on_device`` (auto: CUDA),
    within ``run.val_shard_on_device_fraction`` of the memory free now; else the fixed set itself."""
    wanted = config.run.val_shard_on_device
    if wanted is False or (wanted == "auto" and device.type != "cuda"):
        return val_set
    budget = int(config.run.val_shard_on_device_fraction * free_device_bytes(device, ranks_on_node))
    return DeviceShard(val_set, device, rank, world_size, budget)


def evaluate(model: torch.nn.Module, loss_fn, config: TrainConfig, fixed_set: FixedSet | DeviceShard, device,
             rank: int = 0, world_size: int = 1, thesis_loss_fn=None) -> Evaluation:
    """Loss and task metrics of ``model`` on shards ``rank::world_size`` of a fixed set (no gradient), or on
    a :class:`DeviceShard` (which names its own shards); with ``thesis_loss_fn``
    (:func:`~afm_ray.train.configured_model.build_thesis_loss`) also the loss as Table 6 weighs it."""
    network = unwrap(model)
    network.eval()
    evaluation = evaluation_for(config)
    batches = (fixed_set.batches() if isinstance(fixed_set, DeviceShard)
               else (to_tensors(batch, device) for batch in fixed_set.batches(rank, world_size)))
    with torch.no_grad():
        for tensors in batches:
            outputs = forward(network, tensors["x"], config)
            thesis_loss = (None if thesis_loss_fn is None
                           else compute_loss(config.model.spec, thesis_loss_fn, outputs, tensors))
            evaluation.update(outputs, tensors, compute_loss(config.model.spec, loss_fn, outputs, tensors), thesis_loss)
    network.train()
    return evaluation


def summed(shares: list[dict[str, float]]) -> dict[str, float]:
    """Every rank's share of the epoch's figures added up."""
    total: dict[str, float] = {}
    for share in shares:
        for name, value in share.items():
            total[name] = total.get(name, 0.0) + value
    return total


def _stats_since(stats: StreamStats, before: StreamStats) -> dict[str, float]:
    delta = {name: getattr(stats, name) - getattr(before, name)
             for name in ("wait_seconds", "samples", "produce_seconds", "resent", "timed_out", "hedged",
                          "dropped_batches", "samples_skipped")}
    delta.update({f"actor_{actor}": count - before.per_actor_batches.get(actor, 0)
                  for actor, count in stats.per_actor_batches.items()})
    delta.update({f"actor_seconds_{actor}": seconds - before.per_actor_seconds.get(actor, 0.0)
                  for actor, seconds in stats.per_actor_seconds.items()})
    return delta


def data_metrics(shares: list[dict[str, float]], n_actors: int) -> dict[str, float]:
    """Epoch figures of the data pipeline from every rank's ``shares`` (``loop_wait_seconds``: the training
    loop's own wait for prepared batches, ``max_wait_seconds``, ``elapsed``, per-actor counts).

    ``data_wait_fraction`` is the largest rank's: in lock-step the ranks that do not wait spend that
    time inside the all-reduce, waiting for the one that does, so the mean hides a starved job (it is
    kept as ``data_wait_fraction_mean``). ``step_time_over_compute``: how much longer a step took than
    its compute (the starved rank's time less its wait), 1 when data never held a step back;
    ``data_max_wait_seconds``: the longest any rank waited for one batch (at most
    ``pipeline.max_attempts_per_batch × pipeline.batch_timeout_s``, then the batch is dropped). Per
    actor ``a`` of ``n_actors``: ``sim_actor_{a}_share`` of the epoch's batches and
    ``sim_actor_{a}_batches_per_s`` while making them, so a slow node shows in MLflow.
    """
    fractions = [share["loop_wait_seconds"] / max(share["elapsed"], 1e-9) for share in shares]
    starved = max(range(len(shares)), key=lambda rank: fractions[rank])
    compute = shares[starved]["elapsed"] - shares[starved]["loop_wait_seconds"]
    metrics = {"data_wait_fraction": fractions[starved], "data_wait_fraction_mean": sum(fractions) / len(fractions),
               "step_time_over_compute": shares[starved]["elapsed"] / max(compute, 1e-9),
               "data_max_wait_seconds": max(share["max_wait_seconds"] for share in shares)}
    batches: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for share in shares:
        for name, value in share.items():
            if name.startswith("actor_seconds_"):
                actor = name.removeprefix("actor_seconds_")
                seconds[actor] = seconds.get(actor, 0.0) + value
            elif name.startswith("actor_"):
                actor = name.removeprefix("actor_")
                batches[actor] = batches.get(actor, 0.0) + value
    total = sum(batches.values())
    for actor in map(str, range(n_actors)):
        metrics[f"sim_actor_{actor}_share"] = batches.get(actor, 0.0) / max(total, 1e-9)
        metrics[f"sim_actor_{actor}_batches_per_s"] = batches.get(actor, 0.0) / max(seconds.get(actor, 0.0), 1e-9)
    metrics["sim_actors_used"] = float(sum(1 for count in batches.values() if count > 0))
    return metrics


class LossSums:
    """Sample-weighted sums of the training loss and its terms, kept on the device (no sync per step).

    :meth:`read` turns them into plain floats once per logging interval (the epoch):
    ``{"loss": Σ n·total, "loss_<term>": Σ n·term, "loss_samples": Σ n}``.
    """

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self.samples = 0

    def add(self, loss, n_samples: int) -> None:
        for name, value in (("loss", loss.total), *((f"loss_{k}", v) for k, v in loss.terms.items())):
            weighted = value.detach().float() * n_samples
            self._sums[name] = self._sums[name] + weighted if name in self._sums else weighted
        self.samples += n_samples

    def read(self) -> dict[str, float]:
        names = list(self._sums)
        values = torch.stack([self._sums[name] for name in names]).tolist() if names else []
        return {**dict(zip(names, values)), "loss_samples": float(self.samples)}


@dataclass
class StepRunner:
    """One optimiser step of a global batch on this rank: its micro batches' gradients added up, then one update.

    A micro batch of ``n`` samples back-propagates ``loss × n × W / G`` (G the global batch, W the ranks):
    DDP averages the ranks' gradients (÷ W), so the update follows the mean loss of the global batch
    whatever W and the cut into micro batches. Only the last micro batch synchronises the ranks
    (the others run under DDP's ``no_sync``). A rank left without data keeps the ranks in step with a
    zero-loss pass; the learning rate advances by the global batch in any case (per sample seen).
    ``synchronize``: wait for the device after each stage, so that :attr:`seconds` splits the step
    truly on a GPU (benchmarks only).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: SampleSchedule
    loss_fn: torch.nn.Module
    config: TrainConfig
    device: torch.device
    world_size: int
    channels_last: bool = False
    synchronize: bool = False
    sums: LossSums = field(default_factory=LossSums)
    seconds: dict[str, float] = field(default_factory=lambda: {"forward_backward": 0.0, "optimizer": 0.0})

    def run(self, micro_batches: list[DeviceBatch | None]) -> int:
        """Train on one step's micro batches (None where dropped); returns the samples trained."""
        present = [batch for batch in micro_batches if batch is not None]
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        if not present and self.world_size == 1:
            self.schedule.step()
            return 0
        if not present:  # every rank must run the same number of synchronised backward passes
            outputs = forward(self.model, self._memory_format(_blank_input(self.config, self.device)), self.config)
            (sum(o.sum() for o in outputs) * 0.0).backward()
        scale = self.world_size / self.config.run.batch_size
        for position, batch in enumerate(present):
            last = position == len(present) - 1
            with contextlib.nullcontext() if last else getattr(self.model, "no_sync", contextlib.nullcontext)():
                outputs = forward(self.model, self._memory_format(batch.tensors["x"]), self.config)
                loss = compute_loss(self.config.model.spec, self.loss_fn, outputs, batch.tensors)
                (loss.total * (batch.n_samples * scale)).backward()
            self.sums.add(loss, batch.n_samples)
        stepped = self._lap(started, "forward_backward")
        self.optimizer.step()
        self.schedule.step()
        self._lap(stepped, "optimizer")
        return sum(batch.n_samples for batch in present)

    def _lap(self, started: float, stage: str) -> float:
        if self.synchronize and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[stage] += now - started
        return now

    def _memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last(x) if self.channels_last else x


def resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: SampleSchedule,
           config: TrainConfig, device) -> tuple[int, list[dict]]:
    """(first epoch to train, history) from Ray Train's latest checkpoint, whose state is loaded into
    model, optimiser and schedule; ``(0, [])`` when there is none."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as folder:
        state = read_checkpoint_state(folder, device)
        history = json.loads((Path(folder) / HISTORY_FILE).read_text())
    unwrap(model).load_state_dict(state["model"])
    restore_optimizer(optimizer, schedule, state["optimizer"], state["scheduler"],
                      (config.optimizer.beta1, config.optimizer.beta2))
    return state["epoch"] + 1, history


def write_checkpoint(model: torch.nn.Module, optimizer, schedule: SampleSchedule, epoch: int, config_json: str,
                     history: list[dict], metrics: dict[str, float]) -> None:
    """Rank 0's report of an epoch with its checkpoint: state dicts and plain values only, read back with
    ``weights_only=True`` (:func:`read_checkpoint_state`)."""
    with tempfile.TemporaryDirectory(prefix="afm-ray-checkpoint-") as folder:
        torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": schedule.state_dict(), "epoch": epoch, "config_json": config_json},
                   Path(folder) / CHECKPOINT_FILE)
        (Path(folder) / HISTORY_FILE).write_text(json.dumps(history))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def epoch_metrics(total: dict[str, float], config: TrainConfig, epoch: int, world_size: int,
                  schedule: SampleSchedule) -> dict[str, float]:
    """The training figures of an epoch from ``total``, this epoch's sums over all ranks."""
    n_tips = len(config.model.spec.tips)
    samples = max(total["loss_samples"], 1.0)
    return {
        "epoch": epoch, "epochs_completed": epoch + 1, "train_loss": total["loss"] / samples,
        **{f"train_{name}": value / samples for name, value in total.items()
           if name.startswith("loss_") and name != "loss_samples"},
        "train_samples_per_s": total["samples"] * world_size / total["elapsed"],
        # the stream's wait for the pool, in the loader thread (data_metrics: the training loop's own wait)
        "stream_wait_fraction": total["wait_seconds"] / total["elapsed"],
        # what one actor sustains while producing (stacks of all tips per second of its work)
        "sim_stacks_per_s_per_actor": total["samples"] * n_tips / max(total["produce_seconds"], 1e-9),
        "samples_trained": total["samples"],
        "batches_resent": total["resent"], "batches_hedged": total["hedged"], "batches_timed_out": total["timed_out"],
        "batches_dropped": total["dropped_batches"], "samples_skipped": total["samples_skipped"],
        "learning_rate": schedule.get_last_lr()[0], "samples_seen": schedule.samples_seen,
        "global_batch_size": config.run.batch_size, "epoch_seconds": total["elapsed"] / world_size,
    }


def train_loop_per_worker(loop_config: dict) -> None:
    config = TrainConfig.model_validate_json(loop_config["config_json"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()

    device = ray.train.torch.get_device()
    model, memory_channels_last = prepare_network(config, device)
    loss_fn = build_loss(config)
    settings = config.optimizer
    optimizer, schedule = build_optimizer(
        model.parameters(), settings.learning_rate, settings.decay, (settings.beta1, settings.beta2),
        global_batch_size=config.run.batch_size, reference_batch_size=settings.reference_batch_size,
        warmup_samples=settings.warmup_samples, batch_scaling=settings.batch_scaling)
    objective_name, objective_mode = objective(config)
    start_epoch, history = resume(model, optimizer, schedule, config, device)

    cache_mib = config.data.fixed_set_cache_mib
    if cache_mib is None:
        cache_mib = cache_budget_mib(available_memory_bytes(), context.get_local_world_size())
    val_set = FixedSet(loop_config["val_path"], cache_mib=cache_mib)
    n_train = loop_config["n_train_samples"]
    pipeline = config.pipeline
    stream = BatchStream(loop_config["pool"], max_in_flight=pipeline.max_in_flight_per_worker, consumer=rank,
                         consumers=world_size, tenant=loop_config["tenant"],
                         budget_mib=pipeline.object_store_budget_mib_per_worker,
                         max_attempts=pipeline.max_attempts_per_batch, seed=config.run.seed)
    raw_df = pipeline.augment_on == "trainer" or (pipeline.augment_on == "auto" and config.scaling.use_gpu)

    def rank_steps(epoch: int) -> list[list[BatchSpec]]:
        steps = micro_batches_for_rank(plan_epoch(n_train, config.run.batch_size, config.run.seed, epoch), rank,
                                       world_size, config.micro_batches_per_step)
        slim = {"raw_df": True, "raw_df_dtype": pipeline.raw_df_dtype, "target_dtype": pipeline.target_dtype,
                "raw_df_read_slices": pipeline.raw_df_slices == "read"}
        return [[dataclasses.replace(spec, **slim) for spec in step] for step in steps] if raw_df else steps

    runner = StepRunner(model, optimizer, schedule, loss_fn, config, device, world_size, memory_channels_last)
    validation: FixedSet | DeviceShard | None = None
    for epoch in range(start_epoch, config.run.epochs):
        steps = rank_steps(epoch)
        stream.request([spec for step in steps for spec in step])
        # queued behind this epoch, two epochs ahead (a short epoch's successor alone may be made before a long
        # validation ends): the pool makes them within the worker's object-store budget while it validates
        for ahead in range(epoch + 1, min(epoch + 3, config.run.epochs) if pipeline.prefetch_next_epoch else 0):
            stream.request([spec for step in rank_steps(ahead) for spec in step])
        stream.stats.max_wait_seconds = 0.0  # this epoch's longest wait for one batch
        before = stream.stats.copy()
        model.train()
        runner.sums = LossSums()
        started = time.perf_counter()
        trained = 0
        # in plan order, so that the ranks' pieces of one global batch meet in one synchronised step; batches
        # that arrive early wait in the stream and count against its in-flight bound
        loader = StepLoader(stream.results, steps, device, config.augment, config.sim.num_slices,
                            depth=config.run.loader_depth)
        for micro_batches in loader:
            trained += runner.run(micro_batches)
        local = {**runner.sums.read(), "trained": float(trained), **_stats_since(stream.stats, before),
                 "loop_wait_seconds": loader.times.wait_seconds, "max_wait_seconds": stream.stats.max_wait_seconds,
                 "elapsed": time.perf_counter() - started}
        shares = gathered_from_ranks(local)
        total = summed(shares)
        if total["trained"] == 0:
            raise RuntimeError(f"epoch {epoch}: no training batch arrived on any rank ({n_train} samples, global "
                               f"batch {config.run.batch_size}, {world_size} ranks); see the log for dropped batches")
        validation_started = time.perf_counter()
        if validation is None:  # measured now: the first epoch has claimed the device memory training needs
            validation = validation_source(val_set, config, device, rank, world_size, context.get_local_world_size())
        evaluation = evaluate(model, loss_fn, config, validation, device, rank, world_size).combined_over_ranks()
        metrics = {**epoch_metrics(total, config, epoch, world_size, schedule),
                   **data_metrics(shares, pipeline.num_sim_actors), **evaluation.result("val"),
                   "validation_seconds": time.perf_counter() - validation_started}
        history.append({k: float(v) for k, v in metrics.items()})
        best = [h[objective_name] for h in history]
        metrics["is_best"] = float(metrics[objective_name] == (max(best) if objective_mode == "max" else min(best)))
        metrics = {k: float(v) for k, v in metrics.items()}
        if rank == 0:
            write_checkpoint(model, optimizer, schedule, epoch, loop_config["config_json"], history, metrics)
        else:
            ray.train.report(metrics, checkpoint=None)
    stream.close()


def _blank_input(config: TrainConfig, device) -> torch.Tensor:
    """One all-zero input sample, (1, tips, nx, ny, slices)."""
    return torch.zeros(1, len(config.model.spec.tips), *config.sim.scan_pixels, config.input_slices, device=device)
