"""Using trained models: registry lookup, prediction on .npz / Nanonis stacks, xyz output, bad input.

The models are trained in this session (tests/conftest.py: ``trained_dsh``, ``trained_xyz``) on a
local Ray cluster and registered in a temporary sqlite MLflow store.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from afm_ray.samples.augment import CutoutConfig, NoiseConfig, ShiftConfig, normalize_slices
from afm_ray.samples.batches import BatchFactory, SplitSamples
from afm_ray.molecules.database import read_molecules
from afm_ray.pipeline.sources import task_of
from afm_ray.samples.plan import BatchSpec
from afm_ray.predict import Predictor, load_model
from afm_ray.registry.checkpoints import load_checkpoint_model

from nanonis_files import write_3ds, write_sxm

DSH_OUTPUTS = ("atomic_disks", "vdw_spheres", "height_map")


def untilted_sim_yaml(config, path):
    """The model's simulator settings without tip tilt, as a file for ``afm-ray simulate --config``."""
    path.write_text(config.sim.model_copy(update={"tilt_radius_angstrom": 0.0}).to_yaml())
    return path


def test_registered_model_is_found_by_alias_and_predicts_like_the_trained_network(trained_dsh):
    config, outcome = trained_dsh
    uri = config.mlflow.tracking_uri
    trained, _, _ = load_checkpoint_model(outcome.checkpoint_path)  # the network training ended with
    x = torch.randn(3, 1, 32, 32, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dict(zip(DSH_OUTPUTS, (t.numpy() for t in trained(x))))

    loaded = load_model("models:/afm-test-dsh@current", tracking_uri=uri)
    assert (loaded.registered_name, loaded.version, loaded.run_id) == ("afm-test-dsh", outcome.model_version, outcome.run_id)
    assert loaded.model_name == "dsh" and loaded.config.sim == config.sim and loaded.config.input_slices == 6
    for reference in ("models:/afm-test-dsh@current", f"models:/afm-test-dsh/{outcome.model_version}",
                      "models:/afm-test-dsh/latest", f"runs:/{outcome.run_id}/model", outcome.checkpoint_path):
        outputs = Predictor(load_model(reference, tracking_uri=uri), use_ray=False).predict_arrays(x.numpy())
        for name in DSH_OUTPUTS:
            np.testing.assert_array_equal(outputs[name], expected[name], err_msg=f"{reference}: {name}")


def test_predict_on_simulated_npz_equals_the_training_pipeline(trained_dsh, tiny_database, tmp_path, run_cli):
    """``afm-ray simulate`` → .npz → ``afm-ray predict`` gives the network input and outputs of the
    training pipeline (BatchFactory: simulation, slice choice, normalisation) for the same molecule
    and slices, with noise, shifts and cutouts off and no tip tilt (the random parts of training)."""
    config, _ = trained_dsh
    uri = config.mlflow.tracking_uri
    molecule = read_molecules(tiny_database, split="tiny", subset="test")[0]
    stacks = tmp_path / "stacks.npz"
    code, _, err = run_cli("simulate", "--molecules", tiny_database, "--ids", molecule.id,
                           "--config", untilted_sim_yaml(config, tmp_path / "sim.yaml"), "--out", stacks)
    assert code == 0, err

    sim = config.sim.model_copy(update={"tilt_radius_angstrom": 0.0})
    deterministic = config.augment.model_copy(update={"noise": NoiseConfig(enabled=False),
                                                      "shift": ShiftConfig(enabled=False),
                                                      "cutout": CutoutConfig(enabled=False)})
    factory = BatchFactory(task_of(config.sample_settings), sim, deterministic, config.descriptors,
                           {"probe": SplitSamples((molecule,), np.eye(3)[None, None])}, device="cpu")
    batch = factory.make_batch(BatchSpec("probe", 0, 0, np.array([0]), (5,)))
    factory.close()
    # which of the 12 simulated slices the pipeline drew: compare with every normalised slice
    normalised = normalize_slices(np.load(stacks)["df"])[0]  # (32, 32, 12)
    distance = np.abs(normalised[:, :, None, :] - batch.x[0, 0][:, :, :, None]).max(axis=(0, 1))  # (K, 12)
    indices = distance.argmin(axis=1)
    assert distance.min(axis=1).max() < 1e-4 and np.all(np.diff(indices) > 0), distance.min(axis=1)

    out = tmp_path / "pred"
    code, stdout, err = run_cli("predict", "--model", "models:/afm-test-dsh@current", "--tracking-uri", uri,
                                "--input", stacks, "--slices", ",".join(map(str, indices)), "--out", out)
    assert code == 0, err
    saved = np.load(out / "stacks.npz")
    np.testing.assert_array_equal(saved["slice_indices"], indices)
    np.testing.assert_allclose(saved["x"], batch.x[0], atol=1e-4)
    trained, _, _ = load_checkpoint_model(trained_dsh[1].checkpoint_path)
    with torch.no_grad():
        in_pipeline = trained(torch.from_numpy(batch.x))
    for name, expected in zip(DSH_OUTPUTS, in_pipeline):
        np.testing.assert_allclose(saved[name], expected[0].numpy(), atol=1e-4, err_msg=name)
    assert (out / "stacks.png").stat().st_size > 10_000

    # default slices: 6 evenly spread over the closest 8 (the training window) of 12
    code, stdout, err = run_cli("predict", "--model", "models:/afm-test-dsh@current", "--tracking-uri", uri,
                                "--input", stacks, "--out", tmp_path / "auto", "--no-figures")
    assert code == 0, err
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["version"] == trained_dsh[1].model_version
    assert summary["stacks"][0]["slice_indices"] == [4, 5, 7, 8, 10, 11]
    assert "slices [4, 5, 7, 8, 10, 11]" in stdout


def test_nanonis_grid_and_images_predict_like_the_npz(trained_dsh, tmp_path, run_cli):
    """The same stack as .npz, as a .3ds grid (sweep recorded close → far) and as 12 .sxm images
    (half scanned downwards) gives the same prediction: axes, orientation and z order agree."""
    config, _ = trained_dsh
    df = np.random.default_rng(0).normal(size=(32, 32, 12)).astype(np.float32)
    df += np.linspace(0.0, 3.0, 32)[:, None, None]  # a gradient along x: a transposed reader would show
    np.savez(tmp_path / "stack.npz", df=df, scan_size_angstrom=np.array([16.0, 16.0]), tip="CO")
    write_3ds(tmp_path / "grid.3ds", df[:, :, ::-1], (16.0, 16.0), np.linspace(1e-10, 2.1e-9, 12))
    images = []
    for k in range(12):
        images.append(tmp_path / f"slice{k:02d}.sxm")
        write_sxm(images[-1], df[:, :, k], (16.0, 16.0), "down" if k % 2 else "up")
    out = tmp_path / "pred"
    code, _, err = run_cli("predict", "--model", "models:/afm-test-dsh@current", "--tracking-uri",
                           config.mlflow.tracking_uri, "--input", tmp_path / "stack.npz", tmp_path / "grid.3ds",
                           ",".join(map(str, images)), "--out", out, "--no-figures")
    assert code == 0, err
    expected = np.load(out / "stack.npz")
    for name in ("grid", "+".join(p.stem for p in images)):
        got = np.load(out / f"{name}.npz")
        np.testing.assert_allclose(got["x"], expected["x"], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got["vdw_spheres"], expected["vdw_spheres"], atol=1e-5, err_msg=name)


def test_xyz_prediction_is_written_as_extended_xyz_that_ase_reads(trained_xyz, tiny_database, tmp_path, run_cli):
    import ase.io

    config, outcome = trained_xyz
    molecule = read_molecules(tiny_database, split="tiny", subset="test")[0]
    stacks = tmp_path / "xyz_stacks.npz"
    code, _, err = run_cli("simulate", "--molecules", tiny_database, "--ids", molecule.id,
                           "--config", untilted_sim_yaml(config, tmp_path / "sim.yaml"), "--out", stacks)
    assert code == 0, err
    out = tmp_path / "pred"
    # threshold 0: every box reports its atom (a one-epoch model is not confident), NMS thins them
    code, stdout, err = run_cli("predict", "--model", "models:/afm-test-xyz@current", "--tracking-uri",
                                config.mlflow.tracking_uri, "--input", stacks, "--threshold", "0", "--out", out)
    assert code == 0, err
    stem = "xyz_stacks"
    saved = np.load(out / f"{stem}.npz")
    assert saved["xyz_classes"].shape == (5, 8, 8) and saved["xyz_offsets"].shape == (3, 8, 8)
    atoms = ase.io.read(out / f"{stem}.xyz")
    assert len(atoms) == len(saved["atom_positions"]) > 0
    np.testing.assert_allclose(atoms.positions, saved["atom_positions"], atol=1e-6)
    np.testing.assert_allclose(atoms.arrays["confidence"], saved["atom_confidence"], atol=1e-6)
    np.testing.assert_array_equal(atoms.arrays["atom_class"], saved["atom_classes"])
    # classes 1 H, 2 C, 3 N,O,F, 4 other: a class of one element is written as that element
    expected_symbols = [{1: "H", 2: "C"}.get(int(c), "X") for c in saved["atom_classes"]]
    assert atoms.get_chemical_symbols() == expected_symbols
    assert f"{len(atoms)} atoms ≥ 0" in stdout and (out / f"{stem}.png").exists()


def test_models_list_and_show_describe_the_registry(trained_dsh, trained_xyz, run_cli):
    uri = trained_dsh[0].mlflow.tracking_uri
    code, out, err = run_cli("models", "list", "--tracking-uri", uri)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["afm-test-dsh"].split()[1:] == ["dsh", "1", "1", "@current", "→", "v1"]
    assert lines["afm-test-xyz"].split()[1:] == ["xyz", "1", "1", "@current", "→", "v1"]

    code, out, err = run_cli("models", "show", "afm-test-dsh", "--tracking-uri", uri)
    assert code == 0, err
    assert out.startswith("afm-test-dsh  architecture dsh, 1 version(s), aliases: @current → v1")
    assert "version 1 @current  (READY, registered " in out and f"run {trained_dsh[1].run_id})" in out
    assert "load with: models:/afm-test-dsh/1  or  models:/afm-test-dsh@current" in out
    assert "input:     CO, 32×32 px over 16×16 Å, 6 slices" in out
    assert "slices:    6 of a random window of 8 (of 12 simulated), dz 0.1 Å" in out
    assert "training:  3 epochs, global batch 6 on 1 workers" in out
    metrics = dict(item.rsplit(" ", 1) for item in out.split("metrics:  ")[1].strip().split(", "))
    assert float(metrics["test_mse_mean"]) == pytest.approx(trained_dsh[1].test_metrics["test_mse_mean"], rel=1e-3)

    code, out, err = run_cli("models", "show", "afm-test-xyz", "--tracking-uri", uri)
    assert code == 0 and "input:     CO, 64×64 px over 8×8 Å, 6 slices" in out
    assert "classes [['H'], ['C'], ['N', 'O', 'F']]" in out

    code, _, err = run_cli("models", "show", "afm-nope", "--tracking-uri", uri)
    assert code == 2 and "models show: no registered model 'afm-nope'" in err and "afm-test-dsh, afm-test-xyz" in err


# -- bad input ------------------------------------------------------------------------------------
def _stack_file(folder, name: str, df, **extra):
    path = folder / name
    np.savez(path, df=df, **extra)
    return path


@pytest.mark.parametrize("case, message", [
    ("no model", "--model: no registered model 'afm-missing' in sqlite:"),
    ("no alias", "--model: registered model 'afm-test-dsh' has no alias 'champion' (aliases: @current → v1)"),
    ("no version", "--model: registered model 'afm-test-dsh' has no version '9' (versions: 1)"),
    ("no folder", "no such model folder, and not a models:/ or runs:/ URI"),
    ("missing file", "absent.npz: no such file"),
    ("unsupported", "scan.tif: unsupported file type '.tif'; use one of .npz, .npy, .3ds, .sxm"),
    ("4 slices", "thin.npz (stack 'thin'): has 4 slices but the model needs 6 (z far → close on the last axis"),
    ("NaN", "has 1 non-finite values (NaN/inf), first at channel 0, pixel (3, 4), slice 2"),
    ("pixel size", "pixel size 2 Å along x is 4.00× larger than the model's 0.5 Å (limit 2×, --max-resample)"),
    ("wrong tip", "was recorded with tip(s) Xe, the model needs CO"),
    ("wrong axes", "stack must be (nx, ny, nz), (N, nx, ny, nz) or (N, C, nx, ny, nz); got shape (2, 1, 1, 32, 32, 12)"),
    ("bad slices", "--slices: indices must increase (far → close) without repeats, got [5, 4, 6, 7, 8, 9]"),
])
def test_bad_input_is_refused_with_a_clear_message(trained_dsh, tmp_path, run_cli, case, message):
    uri = trained_dsh[0].mlflow.tracking_uri
    good = np.ones((32, 32, 12), np.float32) + np.arange(32)[:, None, None]
    model, inputs, extra = "models:/afm-test-dsh@current", [_stack_file(tmp_path, "good.npz", good)], []
    if case == "no model":
        model = "models:/afm-missing@current"
    elif case == "no alias":
        model = "models:/afm-test-dsh@champion"
    elif case == "no version":
        model = "models:/afm-test-dsh/9"
    elif case == "no folder":
        model = str(tmp_path / "nowhere")
    elif case == "missing file":
        inputs = [tmp_path / "absent.npz"]
    elif case == "unsupported":
        (tmp_path / "scan.tif").write_bytes(b"II*\x00")
        inputs = [tmp_path / "scan.tif"]
    elif case == "4 slices":
        inputs = [_stack_file(tmp_path, "thin.npz", good[:, :, :4])]
    elif case == "NaN":
        bad = good.copy()
        bad[3, 4, 2] = np.nan
        inputs = [_stack_file(tmp_path, "nan.npz", bad)]
    elif case == "pixel size":
        inputs = [_stack_file(tmp_path, "wide.npz", good, scan_size_angstrom=np.array([64.0, 64.0]))]
    elif case == "wrong tip":
        inputs = [_stack_file(tmp_path, "xe.npz", good, tip="Xe")]
    elif case == "wrong axes":
        inputs = [_stack_file(tmp_path, "six.npz", good[None, None, None].repeat(2, axis=0))]
    elif case == "bad slices":
        extra = ["--slices", "5,4,6,7,8,9"]
    code, out, err = run_cli("predict", "--model", model, "--tracking-uri", uri, "--input", *inputs,
                             "--out", tmp_path / "out", *extra)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()  # nothing written: no silent partial result


def test_pixel_size_within_limits_is_resampled_with_a_note(trained_dsh, tmp_path, run_cli):
    good = np.ones((32, 32, 12), np.float32) + np.arange(32)[:, None, None]
    wide = _stack_file(tmp_path, "wide.npz", good, scan_size_angstrom=np.array([20.0, 16.0]))
    code, out, err = run_cli("predict", "--model", "models:/afm-test-dsh@current", "--tracking-uri",
                             trained_dsh[0].mlflow.tracking_uri, "--input", wide, "--out", tmp_path / "out", "--no-figures")
    assert code == 0, err
    assert "resampled ×1.25, ×1" in out
    assert "afm-ray: note: " in err and "the 20 Å scan along x is larger than the model's 16 Å window: 8 px cropped" in err
    assert np.load(tmp_path / "out" / "wide.npz")["x"].shape == (1, 32, 32, 6)
