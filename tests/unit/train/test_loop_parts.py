"""The parts of the training worker's loop (afm_ray/train/loop.py) that run without Ray Train: a rank's steps
of an epoch, one epoch trained from a stream of real simulated batches, the epoch's figures, the best-epoch flag,
and the training state written to and resumed from a checkpoint folder."""

import numpy as np
import pytest
import torch
from ray.train import Checkpoint

from afm_ray.pipeline.stream import StreamStats
from afm_ray.recipe import load_train_config
from afm_ray.samples.plan import plan_epoch
from afm_ray.train.checkpointing import TrainingState
from afm_ray.train.configured_model import build_loss
from afm_ray.train.epoch_metrics import epoch_metrics, with_best_flag
from afm_ray.train.loop import rank_steps, train_epoch
from afm_ray.train.optim import build_optimizer
from afm_ray.train.step import StepRunner

from conftest import CONFIGS


@pytest.fixture
def config():
    return load_train_config(CONFIGS / "quickstart.yaml", ["run.batch_size=6", "run.channels_last=false"])


def runner_for(config, betas=(0.9, 0.999)) -> StepRunner:
    torch.manual_seed(0)
    model = config.build_network()
    optimizer, schedule = build_optimizer(model.parameters(), betas=betas, global_batch_size=config.run.batch_size)
    return StepRunner(model, optimizer, schedule, build_loss(config), config, torch.device("cpu"), world_size=1)


class FactoryStream:
    """A rank's stream served in this process by a real :class:`BatchFactory` (one "actor", index 0), counting
    what it hands out in :class:`StreamStats` as the Ray stream does."""

    def __init__(self, factory):
        self.factory = factory
        self.stats = StreamStats()
        self.fetched: list[int] = []

    def results(self, specs):
        for spec in specs:
            batch = self.factory.make_batch(spec)
            self.fetched.append(spec.index)
            self.stats.batches += 1
            self.stats.samples += len(spec.samples)
            self.stats.per_actor_batches[0] = self.stats.per_actor_batches.get(0, 0) + 1
            self.stats.per_actor_seconds[0] = self.stats.per_actor_seconds.get(0, 0.0) + 0.5
            yield spec, batch


def test_the_ranks_steps_cut_each_global_batch_and_slim_specs_ask_for_raw_df(config):
    assert config.micro_batches_per_step == 1
    whole = plan_epoch(24, 6, config.run.seed, 1)
    one = rank_steps(config, 24, 1, rank=0, world_size=1, raw_df=False)
    halves = [rank_steps(config, 24, 1, rank=rank, world_size=2, raw_df=False) for rank in (0, 1)]
    assert [[s.samples.tolist() for s in step] for step in one] == [[spec.samples.tolist()] for spec in whole]
    for number, spec in enumerate(whole):  # the two ranks' pieces of a step are that global batch, cut in two
        pieces = [piece for rank in halves for piece in rank[number]]
        assert sorted(s for piece in pieces for s in piece.samples) == sorted(spec.samples)
        assert all(len(piece.samples) == 3 and not piece.raw_df for piece in pieces)
    slim = rank_steps(config, 24, 1, 0, 1, raw_df=True)
    assert all(spec.raw_df and spec.raw_df_dtype == config.pipeline.raw_df_dtype
               and spec.target_dtype == config.pipeline.target_dtype
               and spec.raw_df_read_slices == (config.pipeline.raw_df_slices == "read")
               for step in slim for spec in step)
    assert [[s.samples.tolist() for s in step] for step in slim] == [[s.samples.tolist() for s in step] for step in one]


def test_an_epoch_trains_every_step_of_a_stream_and_returns_the_ranks_share(tiny_config):
    from afm_ray.pipeline.sources import load_split_samples, task_of
    from afm_ray.samples.batches import BatchFactory

    config = tiny_config.model_copy(update={"run": tiny_config.run.model_copy(update={"batch_size": 4,
                                                                                     "channels_last": False})})
    settings = config.sample_settings
    factory = BatchFactory(task_of(settings), settings.sim, settings.augment, settings.descriptors,
                           load_split_samples(settings, ("train",)), device="cpu")
    try:
        n_train = factory.n_samples("train")
        steps = rank_steps(config, n_train, 0, 0, 1, raw_df=True)
        stream = FactoryStream(factory)
        runner = runner_for(config)
        before = [value.clone() for value in runner.model.parameters()]
        share = train_epoch(runner, stream, steps)
    finally:
        factory.close()
    planned = sum(len(spec.samples) for step in steps for spec in step)
    assert planned == n_train - n_train % 4 and share["trained"] == share["loss_samples"] == planned
    assert stream.fetched == [spec.index for step in steps for spec in step]  # every piece once, in plan order
    assert share["samples"] == planned and share["actor_0"] == len(steps) and share["actor_seconds_0"] == 0.5 * len(steps)
    assert np.isfinite(share["loss"]) and share["loss"] > 0 and share["elapsed"] > share["loop_wait_seconds"] >= 0
    assert runner.schedule.samples_seen == planned
    assert any(not torch.equal(old, new) for old, new in zip(before, runner.model.parameters()))


def test_epoch_figures_are_per_sample_means_and_rates(config):
    runner = runner_for(config)
    total = {"loss": 12.0, "loss_samples": 24.0, "loss_position": 6.0, "samples": 24.0, "elapsed": 4.0,
             "wait_seconds": 1.0, "produce_seconds": 2.0, "resent": 1.0, "hedged": 0.0, "timed_out": 0.0,
             "dropped_batches": 0.0, "samples_skipped": 2.0}
    metrics = epoch_metrics(total, config, epoch=2, world_size=2, schedule=runner.schedule)
    assert metrics["train_loss"] == 0.5 and metrics["train_loss_position"] == 0.25
    assert metrics["train_samples_per_s"] == 12.0  # 24 samples × 2 ranks over 4 rank-seconds
    assert metrics["epoch_seconds"] == 2.0 and metrics["stream_wait_fraction"] == 0.25
    assert metrics["epochs_completed"] == 3 and metrics["samples_skipped"] == 2.0
    assert metrics["global_batch_size"] == 6 and metrics["learning_rate"] == runner.schedule.get_last_lr()[0]


@pytest.mark.parametrize("mode, best", [("min", [1.0, 0.0, 1.0, 0.0]), ("max", [1.0, 1.0, 0.0, 0.0])])
def test_the_best_flag_follows_the_objectives_direction(mode, best):
    history, flags = [], []
    for value in (0.5, 0.7, 0.3, 0.6):
        history.append({"val_f1": value})
        flags.append(with_best_flag(history[-1], history, "val_f1", mode)["is_best"])
    assert flags == best and "is_best" not in history[-1]


def test_a_checkpoint_restores_weights_optimiser_and_schedule_with_this_runs_betas(config, tmp_path):
    from afm_ray.train.loader import prepare_batch
    from afm_ray.samples.plan import BatchSpec
    from test_configured_model import batch_of

    trained = runner_for(config)
    samples = np.arange(6)
    trained.run([prepare_batch(BatchSpec("train", 0, 0, samples, (0,)), batch_of(samples, config),
                               torch.device("cpu"), config.augment)])
    state = TrainingState(trained.model, trained.optimizer, trained.schedule, (0.9, 0.999))
    history = [{"epoch": 0.0, "val_loss": 1.5}, {"epoch": 1.0, "val_loss": 1.25}]
    state.save(tmp_path, epoch=1, config_json=config.model_dump_json(), history=history)

    fresh = runner_for(config, betas=(0.8, 0.99))
    resumed = TrainingState(fresh.model, fresh.optimizer, fresh.schedule, (0.8, 0.99))
    assert resumed.restore(None) == (0, [])
    assert resumed.restore(Checkpoint.from_directory(tmp_path)) == (2, history)
    for (name, value), restored in zip(trained.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(value, restored), name
    moments = [s["exp_avg"] for s in trained.optimizer.state_dict()["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(moments, [s["exp_avg"] for s in fresh.optimizer.state_dict()["state"].values()]))
    assert fresh.schedule.samples_seen == trained.schedule.samples_seen == 6
    assert all(group["betas"] == (0.8, 0.99) for group in fresh.optimizer.param_groups)  # this run's, not the file's
