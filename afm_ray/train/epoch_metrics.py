"""An epoch's figures from every rank's share: training loss and throughput (:func:`epoch_metrics`), what the data
pipeline made the ranks wait and which actor made what (:func:`data_metrics`), and whether the epoch is the best
so far (:func:`with_best_flag`). Plain dicts of floats in, plain dicts out: what Ray Train reports and MLflow logs.
"""

from __future__ import annotations

from afm_ray.pipeline import StreamStats
from afm_ray.recipe import TrainConfig
from afm_ray.train.optim import SampleSchedule


def summed(shares: list[dict[str, float]]) -> dict[str, float]:
    """Every rank's share of the epoch's figures added up."""
    total: dict[str, float] = {}
    for share in shares:
        for name, value in share.items():
            total[name] = total.get(name, 0.0) + value
    return total


def stream_delta(stats: StreamStats, before: StreamStats) -> dict[str, float]:
    """What the stream did since ``before`` (a copy of its stats): waits, samples, retries, drops, and per
    actor ``a`` its batches (``actor_{a}``) and busy seconds (``actor_seconds_{a}``)."""
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


def with_best_flag(metrics: dict[str, float], history: list[dict[str, float]], objective_name: str,
                   objective_mode: str) -> dict[str, float]:
    """``metrics`` (this epoch's, already the last entry of ``history``) with ``is_best``: 1.0 where its
    ``objective_name`` is the best of the history (``objective_mode`` ``"max"`` or ``"min"``), else 0.0."""
    values = [entry[objective_name] for entry in history]
    best = max(values) if objective_mode == "max" else min(values)
    return {**metrics, "is_best": float(metrics[objective_name] == best)}
