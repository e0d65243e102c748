"""The per-worker training loop run by Ray Train (one process per DDP rank).

Each epoch a rank plans its share of the epoch's batches, pulls them from the simulation actors
(:class:`~afm_ray.pipeline.BatchStream`), trains, and reports. Rank 0 evaluates the fixed
validation set and writes the checkpoint (model, optimiser, scheduler, epoch, history); the
controller logs each report to MLflow once the checkpoint is saved
(:class:`~afm_ray.train.tracking.MlflowReportCallback`). A restarted worker group resumes from
the latest checkpoint.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import ray.train
import torch
from ray.train import Checkpoint

from afm_ray.batches import MODEL_TIPS
from afm_ray.models.memory_format import channels_last, to_channels_last
from afm_ray.optim import build_optimizer
from afm_ray.pipeline import BatchStream, batches_for_rank, plan_epoch
from afm_ray.pipeline.fixed_sets import FixedSet
from afm_ray.train.config import TrainConfig
from afm_ray.train.steps import Evaluation, build_loss, build_model, compute_loss, evaluation_for, objective, to_tensors

CHECKPOINT_FILE = "state.pt"
HISTORY_FILE = "history.json"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def evaluate(model: torch.nn.Module, loss_fn, config: TrainConfig, fixed_set: FixedSet, device) -> Evaluation:
    """Loss and task metrics of ``model`` on a fixed set (no gradient, no DDP collectives)."""
    network = unwrap(model)
    network.eval()
    evaluation = evaluation_for(config)
    with torch.no_grad():
        for batch in fixed_set.batches():
            tensors = to_tensors(batch, device)
            outputs = network(tensors["x"])
            evaluation.update(outputs, tensors, compute_loss(config.model.name, loss_fn, outputs, tensors))
    network.train()
    return evaluation


def train_loop_per_worker(loop_config: dict) -> None:
    config = TrainConfig.model_validate_json(loop_config["config_json"])
    actors = loop_config["actors"]
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
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=False)
            history = json.loads((Path(folder) / HISTORY_FILE).read_text())
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1

    val_set = FixedSet(loop_config["val_path"]) if rank == 0 else None
    n_train = loop_config["n_train_samples"]
    n_tips = len(MODEL_TIPS[config.model.name])
    for epoch in range(start_epoch, config.run.epochs):
        specs = batches_for_rank(plan_epoch(n_train, config.run.batch_size, config.run.seed, epoch), rank, world_size)
        stream = BatchStream(actors, specs, config.pipeline.max_in_flight_per_worker)
        model.train()
        started = time.perf_counter()
        loss_sum, loss_terms, steps = 0.0, {}, 0
        for spec, batch in stream:
            tensors = to_tensors(batch, device)
            outputs = model(channels_last(tensors["x"]) if config.run.channels_last else tensors["x"])
            loss = compute_loss(config.model.name, loss_fn, outputs, tensors)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
            scheduler.step()
            values = loss.detached()
            loss_sum += values["total"]
            for name, value in values.items():
                if name not in ("total", "n_samples"):
                    loss_terms[name] = loss_terms.get(name, 0.0) + value
            steps += 1
        elapsed = time.perf_counter() - started
        if steps == 0:
            raise RuntimeError(f"epoch {epoch}: no training batches for rank {rank} "
                               f"({n_train} samples, batch size {config.run.batch_size}, {world_size} ranks)")
        stats = stream.stats
        metrics = {
            "epoch": epoch, "train_loss": loss_sum / steps,
            **{f"train_loss_{name}": value / steps for name, value in loss_terms.items()},
            "train_samples_per_s": stats.samples * world_size / elapsed,
            "data_wait_fraction": stats.wait_seconds / elapsed,
            # what one actor sustains while producing (stacks of all tips per second of its work)
            "sim_stacks_per_s_per_actor": stats.samples * n_tips / max(stats.produce_seconds, 1e-9),
            "batches_resent": stats.resent, "learning_rate": scheduler.get_last_lr()[0], "epoch_seconds": elapsed,
        }
        if rank != 0:
            ray.train.report({k: float(v) for k, v in metrics.items()}, checkpoint=None)
            continue
        metrics.update(evaluate(model, loss_fn, config, val_set, device).result("val"))
        history.append({k: float(v) for k, v in metrics.items()})
        best = [h[objective_name] for h in history]
        metrics["is_best"] = float(metrics[objective_name] == (max(best) if objective_mode == "max" else min(best)))
        print(f"epoch {epoch + 1}/{config.run.epochs}  train_loss {metrics['train_loss']:.4g}  "
              f"val_loss {metrics['val_loss']:.4g}  {objective_name} {metrics[objective_name]:.4g}  "
              f"{metrics['train_samples_per_s']:.1f} samples/s  data wait {100 * metrics['data_wait_fraction']:.0f} %",
              # Ray Train's patched print tees a wrapped sys.stdout *and* logs to the console: twice
              file=sys.__stdout__, flush=True)
        with tempfile.TemporaryDirectory(prefix="afm-ray-checkpoint-") as folder:
            torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch,
                        "config_json": loop_config["config_json"]}, Path(folder) / CHECKPOINT_FILE)
            (Path(folder) / HISTORY_FILE).write_text(json.dumps(history))
            ray.train.report({k: float(v) for k, v in metrics.items()}, checkpoint=Checkpoint.from_directory(folder))


def load_checkpoint_model(checkpoint_path: str | Path) -> tuple[torch.nn.Module, TrainConfig, list[dict]]:
    """The trained network (eval mode, CPU), its config and its history from a checkpoint folder."""
    folder = Path(checkpoint_path)
    state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    config = TrainConfig.model_validate_json(state["config_json"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, json.loads((folder / HISTORY_FILE).read_text())
