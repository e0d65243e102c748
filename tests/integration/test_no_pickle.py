"""No pickles: registered models are torch.export (pt2) archives that load without unpickling,
checkpoints load with ``weights_only=True``, and a model an older afm-ray pickled loads only when
the caller trusts it.

Pickle is disabled by patching ``pickle.load``, ``pickle.loads``, ``pickle.Unpickler`` (and
cloudpickle's ``load``/``loads``) to raise while a model loads. The trained model is conftest's
``trained_dsh``; ES, xyz and the replicate-padded DSH of the published weights are small untrained
networks registered here (the export does not depend on the weights' values).
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from afm_ray.models import get_model_spec
from afm_ray.errors import InputError
from afm_ray.models.memory_format import channels_last
from afm_ray.models.packed import ExportedPackedOutputs, PackedOutputs
from afm_ray.predict import Predictor, load_model
from afm_ray.registry import PickledModelWarning, reregister_model
from afm_ray.registry.checkpoints import CHECKPOINT_FILE, HISTORY_FILE, load_checkpoint_model
from afm_ray.registry.registration import CONFIG_METADATA_KEY, SERIALIZATION_METADATA_KEY, log_and_register

from conftest import CONFIGS, copied_mlflow_store


class PickleCalled(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise PickleCalled("pickle was used while loading a model")


class _RefusingUnpickler:
    def __init__(self, *args, **kwargs):
        _refuse()


def disable_pickle(monkeypatch) -> None:
    """Make every way into Python's unpickler raise (until ``monkeypatch`` is undone)."""
    # mlflow.pytorch.pickle_module copies pickle.Unpickler when first imported: imported under the patch, it
    # would keep refusing after the patch is undone (a trusted pickled model then fails to load)
    importlib.import_module("mlflow.pytorch.pickle_module")
    monkeypatch.setattr(pickle, "load", _refuse)
    monkeypatch.setattr(pickle, "loads", _refuse)
    monkeypatch.setattr(pickle, "Unpickler", _RefusingUnpickler)
    try:
        import cloudpickle
    except ImportError:
        return
    monkeypatch.setattr(cloudpickle, "load", _refuse)
    monkeypatch.setattr(cloudpickle, "loads", _refuse)


def test_disabled_pickle_really_refuses(monkeypatch, tmp_path):
    """The patch used below catches torch.load(weights_only=False), as a pickled model load does."""
    torch.save({"network": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with monkeypatch.context() as patch:
        disable_pickle(patch)
        with pytest.raises(PickleCalled):
            torch.load(tmp_path / "pickled.pt", weights_only=False)


def random_input(config, batch: int, seed: int = 0) -> torch.Tensor:
    shape = (batch, len(config.model.spec.tips), *config.sim.scan_pixels, config.input_slices)
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def assert_same_outputs(loaded, network, config, where: str) -> None:
    """The loaded model's outputs equal the eager network's at batch 1 and 5, for contiguous and
    channels-last input, and through the Predictor."""
    names = config.model.spec.output_names
    for batch in (1, 5):
        x = random_input(config, batch, seed=batch)
        with torch.no_grad():
            expected = dict(zip(names, (value.numpy() for value in network(x))))
            for memory_format, given in (("contiguous", x), ("channels-last", channels_last(x))):
                outputs = loaded.packed.unpack(loaded.packed(given))
                for name in names:
                    np.testing.assert_array_equal(outputs[name].numpy(), expected[name],
                                                  err_msg=f"{where} {name} B={batch} {memory_format}")
        outputs = Predictor(loaded, use_ray=False, batch_size=8).predict_arrays(x.numpy())
        for name in names:
            np.testing.assert_array_equal(outputs[name], expected[name], err_msg=f"{where} {name} B={batch} Predictor")


def test_trained_model_loads_and_predicts_with_pickle_disabled(trained_dsh, monkeypatch):
    config, outcome = trained_dsh
    uri = config.mlflow.tracking_uri
    trained, _, _ = load_checkpoint_model(outcome.checkpoint_path)
    with monkeypatch.context() as patch:
        disable_pickle(patch)
        loaded = load_model("models:/afm-test-dsh@current", tracking_uri=uri)
        by_run = load_model(f"runs:/{outcome.run_id}/model", tracking_uri=uri)
    assert isinstance(loaded.packed, ExportedPackedOutputs) and isinstance(by_run.packed, ExportedPackedOutputs)
    assert loaded.output_names == get_model_spec("dsh").output_names and loaded.version == outcome.model_version
    assert_same_outputs(loaded, trained, config, "models:/")
    assert_same_outputs(by_run, trained, config, "runs:/")

    # what evaluation uses: the network's tuple of outputs; train()/eval() leave the exported graph as it is
    network = loaded.packed.network.to("cpu")
    network.eval()
    network.train()
    x = random_input(config, 3)
    with torch.no_grad():
        for got, expected in zip(network(x), trained(x)):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_registered_archive_holds_no_pickled_model(trained_dsh):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    config, outcome = trained_dsh
    client = MlflowClient(config.mlflow.tracking_uri)
    location = client.get_model_version_download_uri("afm-test-dsh", outcome.model_version)
    folder = Path(download_artifacts(artifact_uri=location, tracking_uri=config.mlflow.tracking_uri))
    assert (Model.load(str(folder)).metadata or {})[SERIALIZATION_METADATA_KEY] == "pt2"
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["model.pt2"]
    names = zipfile.ZipFile(folder / "data" / "model.pt2").namelist()
    assert any("/data/weights/weight_" in name for name in names) and not any(name.endswith(".pkl") for name in names)
    assert "afm-ray" not in (folder / "requirements.txt").read_text()  # the graph runs on torch alone


def test_ray_tasks_predict_with_the_exported_model(trained_dsh, ray_session):
    config, _ = trained_dsh
    loaded = load_model("models:/afm-test-dsh@current", tracking_uri=config.mlflow.tracking_uri)
    x = random_input(config, 5).numpy()
    local = Predictor(loaded, use_ray=False).predict_arrays(x)
    remote = Predictor(loaded, use_ray=True, batch_size=2).predict_arrays(x)  # three tasks
    for name in get_model_spec("dsh").output_names:  # other batch sizes and thread counts: float32 rounding only
        np.testing.assert_allclose(remote[name], local[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_store_template):
    return copied_mlflow_store(mlflow_store_template, tmp_path_factory.mktemp("no_pickle_store") / "mlruns.db")


def small_config(store: str, name: str, overrides: list[str]):
    from afm_ray.recipe import load_train_config

    return load_train_config(CONFIGS / "quickstart.yaml", [
        f"mlflow.tracking_uri={store}", f"mlflow.registered_model_name={name}", *overrides])


def new_run(config) -> str:
    from mlflow import MlflowClient

    from afm_ray.registry.tracking import create_config_run

    return create_config_run(MlflowClient(config.mlflow.tracking_uri), config, "no-pickle test", {})


@pytest.mark.parametrize("label, overrides", [
    ("es", ["model.name=es"]),
    ("xyz", ["model.name=xyz", "sim.scan_size_angstrom=[4, 4]"]),
    ("dsh-replicate", ["model.padding=replicate"]),  # the padding of the published ASD-AFM model
])
def test_every_architecture_exports_exactly_and_without_mlflow_pickle_warning(store, label, overrides, monkeypatch, capfd):
    config = small_config(store, f"afm-np-{label}", overrides)
    torch.manual_seed(0)
    network = config.build_network().eval()
    version = log_and_register(network, config, random_input(config, 1).numpy(), store, new_run(config))
    assert "by Pickle" not in capfd.readouterr().err
    with monkeypatch.context() as patch:
        disable_pickle(patch)
        loaded = load_model(f"models:/afm-np-{label}/{version}", tracking_uri=store)
    assert isinstance(loaded.packed, ExportedPackedOutputs) and loaded.model_name == config.model.name
    assert_same_outputs(loaded, network, config, label)


@pytest.fixture(scope="module")
def pickled_model(store):
    """(config, network, version): a DSH registered the way afm-ray did before pt2: pickled, no format entry."""
    import mlflow
    from mlflow import MlflowClient

    config = small_config(store, "afm-np-old", [])
    torch.manual_seed(1)
    network = config.build_network().eval()
    packed = PackedOutputs(network, get_model_spec("dsh").output_names, "dsh").eval()
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        with mlflow.start_run(run_id=new_run(config)):
            info = mlflow.pytorch.log_model(packed, name="model", registered_model_name="afm-np-old",
                                            serialization_format="pickle", pip_requirements=["torch"],
                                            metadata={CONFIG_METADATA_KEY: config.model_dump(mode="json"),
                                                      "afm_ray_provenance": {"source": "test"}})
    finally:
        mlflow.set_tracking_uri(previous)
    version = str(info.registered_model_version)
    MlflowClient(store).set_registered_model_alias("afm-np-old", "current", version)
    return config, network, version


def test_a_pickled_model_is_refused_unless_trusted(store, pickled_model, monkeypatch):
    config, network, _ = pickled_model
    with monkeypatch.context() as patch:
        disable_pickle(patch)  # refused from the MLmodel file, before anything is unpickled
        with pytest.raises(InputError, match=r"afm-np-old@current was registered pickled.*reregister.*--trust-pickle"):
            load_model("models:/afm-np-old@current", tracking_uri=store)
    with pytest.warns(PickledModelWarning, match="runs code stored in the artifact"):
        trusted = load_model("models:/afm-np-old@current", tracking_uri=store, trust_pickle=True)
    assert isinstance(trusted.packed, PackedOutputs)
    assert_same_outputs(trusted, network, config, "trusted pickle")


def test_the_predict_command_needs_trust_pickle_for_a_pickled_model(store, pickled_model, tmp_path, run_cli):
    np.savez(tmp_path / "stack.npz", df=np.random.default_rng(0).normal(size=(32, 32, 12)).astype(np.float32),
             scan_size_angstrom=np.array([16.0, 16.0]), tip="CO")
    arguments = ("predict", "--model", "models:/afm-np-old@current", "--tracking-uri", store,
                 "--input", tmp_path / "stack.npz", "--no-figures", "--local")
    code, _, err = run_cli(*arguments, "--out", tmp_path / "refused")
    assert code == 2 and "registered pickled" in err and "--trust-pickle" in err
    assert not (tmp_path / "refused").exists()
    code, _, err = run_cli(*arguments, "--out", tmp_path / "trusted", "--trust-pickle")
    assert code == 0, err
    assert "afm-ray: warning: " in err and "pickled model" in err
    assert (tmp_path / "trusted" / "stack.npz").is_file()


def test_reregister_turns_a_pickled_model_into_a_safe_version(store, pickled_model, monkeypatch):
    from mlflow import MlflowClient

    config, network, old_version = pickled_model
    with pytest.warns(PickledModelWarning):
        version, _ = reregister_model(f"models:/afm-np-old/{old_version}", store, trust_pickle=True)
    assert int(version) == int(old_version) + 1
    assert str(MlflowClient(store).get_registered_model("afm-np-old").aliases["current"]) == version
    with monkeypatch.context() as patch:
        disable_pickle(patch)
        loaded = load_model("models:/afm-np-old@current", tracking_uri=store)
    assert isinstance(loaded.packed, ExportedPackedOutputs)
    assert_same_outputs(loaded, network, config, "re-registered")
    with pytest.raises(InputError, match="already in the safe format"):
        reregister_model("models:/afm-np-old@current", store)


def test_a_checkpoint_loads_with_weights_only(trained_dsh, monkeypatch):
    config, outcome = trained_dsh
    real_load = torch.load
    calls = []

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, f"torch.load called with weights_only={kwargs.get('weights_only')}"
        calls.append(args[0])
        return real_load(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "load", weights_only_load)
        disable_pickle(patch)
        loaded = load_model(outcome.checkpoint_path)
    assert [Path(path).name for path in calls] == [CHECKPOINT_FILE]
    state = real_load(Path(outcome.checkpoint_path) / CHECKPOINT_FILE, weights_only=True)
    assert set(state) == {"model", "optimizer", "scheduler", "epoch", "config_json"}
    assert set(state["scheduler"]) == {"samples_seen"}  # plain data: the learning rate is a function of it
    assert type(state["scheduler"]["samples_seen"]) is int and state["scheduler"]["samples_seen"] % config.run.batch_size == 0
    trained, _, _ = load_checkpoint_model(outcome.checkpoint_path)
    assert_same_outputs(loaded, trained, config, "checkpoint")


executed: list[str] = []


def _mark_executed() -> None:
    executed.append("unpickled")


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return _mark_executed, ()


def test_a_checkpoint_holding_objects_is_refused_without_running_them(tiny_config, tmp_path):
    folder = tmp_path / "checkpoint_000000"
    folder.mkdir()
    torch.save({"model": {}, "config_json": tiny_config.model_dump_json(), "payload": _RunsCodeWhenUnpickled()},
               folder / CHECKPOINT_FILE)
    (folder / HISTORY_FILE).write_text("[]")
    with pytest.raises(InputError, match=r"state.pt: holds objects other than tensors and plain data"):
        load_model(folder)
    assert executed == []
