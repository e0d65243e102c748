"""The parts of the training worker's loop that need no Ray cluster: the input pipeline (background loader,
device batches), one optimiser step of a global batch from micro batches (gradient accumulation, dropped
batches) and the loss sums kept on the device."""

import numpy as np
import pytest
import torch

from afm_ray.train.optim import build_optimizer
from afm_ray.samples.plan import BatchSpec
from afm_ray.samples.sample_batch import SampleBatch
from afm_ray.recipe import load_train_config
from afm_ray.train.loader import StepLoader, prepare_batch
from afm_ray.train.step import StepRunner
from afm_ray.train.configured_model import build_loss

from conftest import CONFIGS


@pytest.fixture
def config():
    return load_train_config(CONFIGS / "quickstart.yaml", ["run.batch_size=6", "run.channels_last=false"])


def batch_of(samples: np.ndarray, config) -> SampleBatch:
    """A training batch as an actor returns it (augmented input, DSH targets), random but fixed per sample."""
    x, maps = [], []
    for sample in samples:
        generator = np.random.default_rng(int(sample))
        x.append(generator.normal(size=(1, *config.sim.scan_pixels, config.input_slices)).astype(np.float32))
        maps.append(generator.random((3, *config.sim.scan_pixels)).astype(np.float32))
    maps = np.stack(maps)
    return SampleBatch(np.asarray(samples, dtype=np.int64), x=np.stack(x),
                       targets={name: maps[:, k] for k, name in enumerate(config.model.spec.targets)})


def on_device(spec: BatchSpec, batch: SampleBatch | None, config):
    return prepare_batch(spec, batch, torch.device("cpu"), config.augment)


def runner_for(config) -> StepRunner:
    torch.manual_seed(0)
    model = config.build_network()
    optimizer, schedule = build_optimizer(model.parameters(), global_batch_size=config.run.batch_size)
    return StepRunner(model, optimizer, schedule, build_loss(config), config, torch.device("cpu"), world_size=1)


@pytest.mark.parametrize("cut", [[6], [3, 3], [4, 2], [1, 2, 3]], ids=["whole", "halves", "uneven", "three"])
def test_a_step_from_micro_batches_equals_the_step_on_the_whole_global_batch(config, cut):
    samples = np.arange(10, 16)
    whole = runner_for(config)
    assert whole.run([on_device(BatchSpec("train", 0, 0, samples, (0,)), batch_of(samples, config), config)]) == 6
    pieces = np.split(samples, np.cumsum(cut)[:-1])
    accumulated = runner_for(config)
    trained = accumulated.run([on_device(BatchSpec("train", 0, i, piece, (0, i)), batch_of(piece, config), config)
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
    assert on_device(BatchSpec("train", 0, 0, np.arange(6), (0,)), None, config) is None
    assert runner.run([None]) == 0
    assert all(torch.equal(before[name], value) for name, value in runner.model.state_dict().items())
    assert runner.schedule.samples_seen == 6 and runner.sums.read()["loss_samples"] == 0
    # a piece that lost a sample on the actor still trains on the rest
    short = batch_of(np.arange(5), config)
    assert runner.run([on_device(BatchSpec("train", 0, 1, np.arange(6), (1,)), short, config)]) == 5
    assert runner.schedule.samples_seen == 12


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_the_loader_hands_out_every_step_in_plan_order_on_the_device_augmented(config, depth):
    """Raw Δf batches arrive in any order (as the stream completes them); the loader prepares them ahead in a
    background thread (depth ≥ 1) or in the loop (0): the same steps, in plan order, with the input augmented
    exactly as the trainer's augmentation of that piece's seed."""
    from afm_ray.samples.augment_torch import augment_batch
    from afm_ray.samples.plan import micro_batches_for_rank, plan_epoch

    steps = micro_batches_for_rank(plan_epoch(24, 6, run_seed=0, epoch=0), 0, 1, micro_batches=2)
    nz = config.sim.num_slices

    def raw(spec):
        df = np.random.default_rng(spec.index).normal(size=(len(spec.samples), 1, *config.sim.scan_pixels, nz))
        return SampleBatch(spec.samples, df=df.astype(np.float32),
                           targets={"disks": np.zeros((len(spec.samples), 32, 32), np.float32)})

    fetched = []

    def fetch(step):  # completion order: the step's last piece first
        fetched.append([spec.index for spec in step])
        return [(spec, raw(spec)) for spec in reversed(step)]

    loader = StepLoader(fetch, steps, torch.device("cpu"), config.augment, depth=depth)
    handed = list(loader)
    assert [[batch.spec.index for batch in step] for step in handed] == [[s.index for s in step] for step in steps]
    assert fetched == [[s.index for s in step] for step in steps]
    for step in handed:
        for batch in step:
            expected = augment_batch(torch.from_numpy(raw(batch.spec).df), batch.spec.seed, config.augment)
            assert torch.equal(batch.tensors["x"], expected) and "df" not in batch.tensors
            assert batch.n_samples == 3 and batch.tensors["disks"].shape == (3, 32, 32)
    assert loader.times.receive_seconds > 0 and loader.times.augment_seconds > 0


def test_a_loader_failure_reaches_the_training_loop_and_stops_the_thread(config):
    import threading

    from afm_ray.samples.plan import micro_batches_for_rank, plan_epoch

    def fetch(step):
        raise RuntimeError(f"stream broke at {step[0].index}")

    loader = StepLoader(fetch, micro_batches_for_rank(plan_epoch(12, 6, 0, 0), 0, 1), torch.device("cpu"),
                        config.augment)
    with pytest.raises(RuntimeError, match="stream broke at 0"):
        list(loader)
    assert not [t for t in threading.enumerate() if t.name == "afm-ray-step-loader"]


def test_evaluation_reports_the_loss_with_the_thesis_weights_beside_the_configs():
    """Σ_k w_k · MSE_k by hand, with the config's weights (ASD-AFM's 20, 0.2, 0.1) and the thesis' (20, 0.3, 0.2),
    over two batches of unequal size; and the printed report shows both beside Table 6."""
    from afm_ray.evaluation.registered import EvaluationReport, loss_descriptions
    from afm_ray.train.configured_model import build_thesis_loss, compute_loss, evaluation_for

    config = load_train_config(CONFIGS / "quickstart.yaml", ["loss.dsh_weights=[20, 0.2, 0.1]"])
    spec = config.model.spec
    generator = np.random.default_rng(7)
    predictions = generator.random((5, 3, 8, 8)).astype(np.float32)  # (samples, output, X, Y)
    targets = generator.random((5, 3, 8, 8)).astype(np.float32)
    evaluation = evaluation_for(config)
    for part in (slice(0, 2), slice(2, 5)):
        outputs = tuple(torch.from_numpy(predictions[part, k]) for k in range(3))
        tensors = {name: torch.from_numpy(targets[part, k]) for k, name in enumerate(spec.targets)}
        evaluation.update(outputs, tensors, compute_loss(spec, build_loss(config), outputs, tensors),
                          compute_loss(spec, build_thesis_loss(config), outputs, tensors))
    mse = ((predictions.astype(np.float64) - targets) ** 2).mean(axis=(0, 2, 3))
    figures = evaluation.result("test")
    assert figures["test_loss"] == pytest.approx(20 * mse[0] + 0.2 * mse[1] + 0.1 * mse[2], rel=1e-5)
    assert figures["test_loss_thesis_weights"] == pytest.approx(20 * mse[0] + 0.3 * mse[1] + 0.2 * mse[2], rel=1e-5)
    for k, name in enumerate(spec.targets):
        assert figures[f"test_mse_{name}"] == pytest.approx(mse[k], rel=1e-5)

    assert loss_descriptions(config) == ("weights 20, 0.2, 0.1", "weights 20, 0.3, 0.2")
    report = EvaluationReport("models:/m@a", "dsh", "dataset1", "test", 5, figures, "run", False,
                              {"dataset1": 1.92e-3}, *loss_descriptions(config))
    printed = "\n".join(report.lines())
    assert "weights 20, 0.2, 0.1" in printed and "weights 20, 0.3, 0.2, the thesis'" in printed, printed
    assert f"{figures['test_loss_thesis_weights']:.3g}" in printed and "thesis dsh dataset1 test 0.00192" in printed
    row = next(line for line in report.lines() if line.split()[0] == "atomic_disks")
    assert row.split()[1:] == [f"{mse[0]:.4g}", f"{figures['test_corr_atomic_disks']:.4f}"], printed
