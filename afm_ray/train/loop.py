"""The per-worker training loop run by Ray Train (one process per DDP rank).

Each rank pulls its share of every epoch's batches from the simulation actors through one
:class:`~afm_ray.pipeline.BatchStream` that lasts the whole run, so the next epoch's batches are
requested while this epoch ends, validates and checkpoints (``pipeline.prefetch_next_epoch``).
Every rank then validates its shard of the fixed validation set; the shares are combined into
one evaluation equal to a single-rank one, and training figures are summed over all ranks. Rank 0
writes the checkpoint (state dicts of model, optimiser and scheduler, epoch and config; history as
JSON; read back with ``weights_only=True``); the controller logs each report to MLflow once the
checkpoint is saved (:class:`~afm_ray.train.tracking.MlflowReportCallback`).
A restarted worker group resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import tempfile
import time
from pathlib import Path

import ray.train
import torch
from ray.train import Checkpoint

from afm_ray.augment_torch import augment_batch
from afm_ray.errors import InputError
from afm_ray.models.memory_format import channels_last, to_channels_last
from afm_ray.optim import build_optimizer, restore_optimizer
from afm_ray.pipeline import BatchStream, StreamStats, batches_for_rank, plan_epoch
from afm_ray.pipeline.fixed_sets import FixedSet
from afm_ray.train.config import TrainConfig
from afm_ray.train.steps import (Evaluation, build_loss, build_model, compute_loss, evaluation_for,
                                 gathered_from_ranks, objective, to_tensors)

CHECKPOINT_FILE = "state.pt"
HISTORY_FILE = "history.json"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def evaluate(model: torch.nn.Module, loss_fn, config: TrainConfig, fixed_set: FixedSet, device,
             rank: int = 0, world_size: int = 1) -> Evaluation:
    """Loss and task metrics of ``model`` on shards ``rank::world_size`` of a fixed set (no gradient)."""
    network = unwrap(model)
    network.eval()
    evaluation = evaluation_for(config)
    with torch.no_grad():
        for batch in fixed_set.batches(rank, world_size):
            tensors = to_tensors(batch, device)
            outputs = network(tensors["x"])
            evaluation.update(outputs, tensors, compute_loss(config.model.spec, loss_fn, outputs, tensors))
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
    """Epoch figures of the data pipeline from every rank's ``shares`` (``wait_seconds``, ``elapsed``, per-actor counts).

    ``data_wait_fraction`` is the largest rank's: in lock-step the ranks that do not wait spend that
    time inside the all-reduce, waiting for the one that does, so the mean hides a starved job (it is
    kept as ``data_wait_fraction_mean``). ``step_time_over_compute``: how much longer a step took than
    its compute (the starved rank's time less its wait), 1 when data never held a step back;
    ``data_max_wait_seconds``: the longest any rank waited for one batch (at most
    ``pipeline.max_attempts_per_batch × pipeline.batch_timeout_s``, then the batch is dropped). Per
    actor ``a`` of ``n_actors``: ``sim_actor_{a}_share`` of the epoch's batches and
    ``sim_actor_{a}_batches_per_s`` while making them, so a slow node shows in MLflow.
    """
    fractions = [share["wait_seconds"] / max(share["elapsed"], 1e-9) for share in shares]
    starved = max(range(len(shares)), key=lambda rank: fractions[rank])
    compute = shares[starved]["elapsed"] - shares[starved]["wait_seconds"]
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


def train_loop_per_worker(loop_config: dict) -> None:
    config = TrainConfig.model_validate_json(loop_config["config_json"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.run.seed)

    network = build_model(config)
    model = ray.train.torch.prepare_model(to_channels_last(network) if config.run.channels_last else network)
    device = ray.train.torch.get_device()
    loss_fn = build_loss(config)
    optimizer, scheduler = build_optimizer(model.parameters(), config.optimizer.learning_rate,
                                           config.optimizer.decay, (config.optimizer.beta1, config.optimizer.beta2))
    objective_name, objective_mode = objective(config)
    history: list[dict] = []
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = read_checkpoint_state(folder, device)
            history = json.loads((Path(folder) / HISTORY_FILE).read_text())
        unwrap(model).load_state_dict(state["model"])
        restore_optimizer(optimizer, scheduler, state["optimizer"], state["scheduler"], config.optimizer.learning_rate,
                          config.optimizer.decay, (config.optimizer.beta1, config.optimizer.beta2))
        start_epoch = state["epoch"] + 1

    val_set = FixedSet(loop_config["val_path"], cache_mib=config.data.fixed_set_cache_mib)
    n_train = loop_config["n_train_samples"]
    n_tips = len(config.model.spec.tips)
    pipeline = config.pipeline
    stream = BatchStream(loop_config["pool"], max_in_flight=pipeline.max_in_flight_per_worker, consumer=rank,
                         consumers=world_size, tenant=loop_config["tenant"],
                         budget_mib=pipeline.object_store_budget_mib_per_worker,
                         max_attempts=pipeline.max_attempts_per_batch, seed=config.run.seed)

    raw_df = pipeline.augment_on == "trainer" or (pipeline.augment_on == "auto" and config.scaling.use_gpu)

    def rank_plan(epoch: int):
        specs = batches_for_rank(plan_epoch(n_train, config.run.batch_size, config.run.seed, epoch), rank, world_size)
        return ([dataclasses.replace(spec, raw_df=True, raw_df_dtype=pipeline.raw_df_dtype) for spec in specs]
                if raw_df else specs)

    def step(loss_total) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_total.backward()
        optimizer.step()
        scheduler.step()

    for epoch in range(start_epoch, config.run.epochs):
        specs = rank_plan(epoch)
        stream.request(specs)
        if pipeline.prefetch_next_epoch and epoch + 1 < config.run.epochs:
            stream.request(rank_plan(epoch + 1))  # queued behind this epoch: actors stay busy while we validate
        stream.stats.max_wait_seconds = 0.0  # this epoch's longest wait for one batch
        before = stream.stats.copy()
        model.train()
        started = time.perf_counter()
        local = {"loss": 0.0, "steps": 0.0}
        for spec, batch in stream.results(specs):
            if batch is None or len(batch["samples"]) == 0:
                if world_size > 1:  # every rank must run the same number of DDP steps: a step of zero loss
                    outputs = model(_blank_input(config, n_tips, device))
                    step(sum(o.sum() for o in outputs) * 0.0)
                continue
            tensors = to_tensors(batch, device)
            if "df" in tensors:  # raw Δf: augmented here, on this worker's device, with the actor's draws
                tensors["x"] = augment_batch(tensors.pop("df").float(), spec.seed, config.augment)
            outputs = model(channels_last(tensors["x"]) if config.run.channels_last else tensors["x"])
            loss = compute_loss(config.model.spec, loss_fn, outputs, tensors)
            step(loss.total)
            for name, value in loss.detached().items():
                if name != "n_samples":
                    key = "loss" if name == "total" else f"loss_{name}"
                    local[key] = local.get(key, 0.0) + value
            local["steps"] += 1
        elapsed = time.perf_counter() - started
        local.update(_stats_since(stream.stats, before), elapsed=elapsed, max_wait_seconds=stream.stats.max_wait_seconds)
        shares = gathered_from_ranks(local)
        total = summed(shares)
        if total["steps"] == 0:
            raise RuntimeError(f"epoch {epoch}: no training batch arrived on any rank ({n_train} samples, batch "
                               f"size {config.run.batch_size}, {world_size} ranks); see the log for dropped batches")
        validation_started = time.perf_counter()
        evaluation = evaluate(model, loss_fn, config, val_set, device, rank, world_size).combined_over_ranks()
        metrics = {
            "epoch": epoch, "epochs_completed": epoch + 1, "train_loss": total["loss"] / total["steps"],
            **{f"train_{name}": value / total["steps"] for name, value in total.items() if name.startswith("loss_")},
            "train_samples_per_s": total["samples"] * world_size / total["elapsed"],
            **data_metrics(shares, pipeline.num_sim_actors),
            # what one actor sustains while producing (stacks of all tips per second of its work)
            "sim_stacks_per_s_per_actor": total["samples"] * n_tips / max(total["produce_seconds"], 1e-9),
            "samples_trained": total["samples"],
            "batches_resent": total["resent"], "batches_timed_out": total["timed_out"], "batches_hedged": total["hedged"],
            "batches_dropped": total["dropped_batches"], "samples_skipped": total["samples_skipped"],
            "learning_rate": scheduler.get_last_lr()[0], "epoch_seconds": total["elapsed"] / world_size,
            **evaluation.result("val"),
            "validation_seconds": time.perf_counter() - validation_started,
        }
        history.append({k: float(v) for k, v in metrics.items()})
        best = [h[objective_name] for h in history]
        metrics["is_best"] = float(metrics[objective_name] == (max(best) if objective_mode == "max" else min(best)))
        if rank != 0:
            ray.train.report({k: float(v) for k, v in metrics.items()}, checkpoint=None)
            continue
        with tempfile.TemporaryDirectory(prefix="afm-ray-checkpoint-") as folder:
            # state dicts and plain values only (the scheduler's factor saves as {"decay": …}):
            # read back with weights_only=True (read_checkpoint_state)
            torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch,
                        "config_json": loop_config["config_json"]}, Path(folder) / CHECKPOINT_FILE)
            (Path(folder) / HISTORY_FILE).write_text(json.dumps(history))
            ray.train.report({k: float(v) for k, v in metrics.items()}, checkpoint=Checkpoint.from_directory(folder))
    stream.close()


def _blank_input(config: TrainConfig, n_tips: int, device) -> torch.Tensor:
    """One all-zero input sample, (1, tips, nx, ny, slices)."""
    x = torch.zeros(1, n_tips, *config.sim.scan_pixels, config.input_slices, device=device)
    return channels_last(x) if config.run.channels_last else x


def read_checkpoint_state(checkpoint_path: str | Path, map_location="cpu") -> dict:
    """The ``state.pt`` of a checkpoint folder: ``model``, ``optimizer`` and ``scheduler`` state dicts,
    ``epoch`` and ``config_json``. Read with ``weights_only=True``: tensors and plain data only, so
    a crafted file cannot run code; anything else is refused with :class:`InputError`."""
    path = Path(checkpoint_path) / CHECKPOINT_FILE
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), "")
        raise InputError(str(path), "holds objects other than tensors and plain data, which afm-ray does not "
                                    f"unpickle (not an afm-ray checkpoint?) {reason[:200]}".rstrip()) from None


def load_checkpoint_model(checkpoint_path: str | Path) -> tuple[torch.nn.Module, TrainConfig, list[dict]]:
    """The trained network (eval mode, CPU), its config and its history from a checkpoint folder."""
    folder = Path(checkpoint_path)
    state = read_checkpoint_state(folder)
    config = TrainConfig.model_validate_json(state["config_json"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, json.loads((folder / HISTORY_FILE).read_text())
