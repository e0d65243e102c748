"""The parts of the training worker's loop that need no Ray cluster: one optimiser step of a global batch
from micro batches (gradient accumulation, dropped batches) and the loss sums kept on the device."""

import numpy as np
import pytest
import torch

from afm_ray.optim import build_optimizer
from afm_ray.plan import BatchSpec
from afm_ray.train.config import load_train_config
from afm_ray.train.loop import StepRunner
from afm_ray.train.steps import build_loss, build_model

from conftest import CONFIGS


@pytest.fixture
def config():
    return load_train_config(CONFIGS / "quickstart.yaml", ["run.batch_size=6", "run.channels_last=false"])


def batch_of(samples: np.ndarray, config) -> dict:
    """A training batch as an actor returns it (augmented input, DSH targets), random but fixed per sample."""
    x, maps = [], []
    for sample in samples:
        generator = np.random.default_rng(int(sample))
        x.append(generator.normal(size=(1, *config.sim.scan_pixels, config.input_slices)).astype(np.float32))
        maps.append(generator.random((3, *config.sim.scan_pixels)).astype(np.float32))
    maps = np.stack(maps)
    return {"x": np.stack(x), **{name: maps[:, k] for k, name in enumerate(config.model.spec.targets)},
            "samples": np.asarray(samples, dtype=np.int64)}


def runner_for(config) -> StepRunner:
    torch.manual_seed(0)
    model = build_model(config)
    optimizer, schedule = build_optimizer(model.parameters(), global_batch_size=config.run.batch_size)
    return StepRunner(model, optimizer, schedule, build_loss(config), config, torch.device("cpu"), world_size=1)


@pytest.mark.parametrize("cut", [[6], [3, 3], [4, 2], [1, 2, 3]], ids=["whole", "halves", "uneven", "three"])
def test_a_step_from_micro_batches_equals_the_step_on_the_whole_global_batch(config, cut):
    samples = np.arange(10, 16)
    whole = runner_for(config)
    assert whole.run([(BatchSpec("train", 0, 0, samples, (0,)), batch_of(samples, config))]) == 6
    pieces = np.split(samples, np.cumsum(cut)[:-1])
    accumulated = runner_for(config)
    trained = accumulated.run([(BatchSpec("train", 0, i, piece, (0, i)), batch_of(piece, config))
                               for i, piece in enumerate(pieces)])
    assert trained == 6 and accumulated.schedule.samples_seen == whole.schedule.samples_seen == 6
    # the accumulated gradient is the whole batch's (weights: Adam's first step is ±lr by the gradient's sign,
    # so where a gradient is ~0 rounding may flip it)
    for (name, value), other in zip(whole.model.named_parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(other.grad, value.grad, rtol=1e-4, atol=1e-8, msg=name)
    first = next(iter(runner_for(config).model.state_dict().values()))
    assert not torch.equal(first, next(iter(whole.model.state_dict().values())))  # the step moved the weights
    # the loss sums, read once: the sample-weighted mean of the micro batches is the whole batch's loss
    sums, reference = accumulated.sums.read(), whole.sums.read()
    assert sums["loss_samples"] == reference["loss_samples"] == 6
    for name, value in reference.items():
        assert sums[name] == pytest.approx(value, rel=1e-5), name


def test_a_dropped_batch_on_one_rank_leaves_the_weights_and_advances_the_learning_rate(config):
    runner = runner_for(config)
    before = {name: value.clone() for name, value in runner.model.state_dict().items()}
    assert runner.run([(BatchSpec("train", 0, 0, np.arange(6), (0,)), None)]) == 0
    assert all(torch.equal(before[name], value) for name, value in runner.model.state_dict().items())
    assert runner.schedule.samples_seen == 6 and runner.sums.read()["loss_samples"] == 0
    # a piece that lost a sample on the actor still trains on the rest
    short = batch_of(np.arange(5), config)
    assert runner.run([(BatchSpec("train", 0, 1, np.arange(6), (1,)), short)]) == 5
    assert runner.schedule.samples_seen == 12
