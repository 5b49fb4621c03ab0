"""Save and load: another process answers ``attribute``, ``top_k`` and ``self_influence`` bit for bit,
a task at other weights and damaged files are refused, and parts that cannot be saved say why."""

import inspect
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

import attrkit
from attrkit.errors import LoadError, ModelChangedError, SaveError
from attrkit.testing import toy_problem

TOY = toy_problem()
CHECKPOINTS = toy_problem(checkpoints=2)
GAUSSIAN = {"name": "gaussian", "dim": 32}
TRAK = {"method": "trak", "projector": GAUSSIAN, "solver": {"name": "gauss-newton", "regularization": 1e-2}}
EKFAC = {"method": "if", "gradients": "factored", "solver": {"name": "ekfac", "regularization": 0.1}}
RELATIF = {"method": "relatif", "solver": {"name": "explicit", "regularization": 0.1}}
#: Below every member's features (24 x 32 or 57 floats): 2-9 rows per tile, across the 5-row chunks.
BUDGET = 3000
#: key -> (spec, out of core)
CASES = {
    "trak": (TRAK, False),
    "trak-out-of-core": (TRAK, True),
    "if-ekfac": (EKFAC, False),
    "if-ekfac-out-of-core": (EKFAC, True),
    "grad-dot": ({"method": "grad-dot"}, False),
    "grad-dot-out-of-core": ({"method": "grad-dot"}, True),
    "relatif": (RELATIF, False),
    "relatif-out-of-core": (RELATIF, True),
    "trak-kmeans-groups": ({**TRAK, "grouper": {"name": "kmeans", "n_groups": 4}}, False),
    "rps": ({"method": "rps"}, False),
}


def outputs(attributor, toy):
    """What a loaded attributor must reproduce bit for bit."""
    out = {"scores": attributor.attribute(toy.test_loader(4)), "self": attributor.self_influence(toy.train_loader(5))}
    if hasattr(attributor, "top_k"):
        best = attributor.top_k(toy.test_loader(4), k=3)
        out.update(proponents=best.proponents, proponent_scores=best.proponent_scores, opponents=best.opponents,
                   opponent_scores=best.opponent_scores)
    return out


SCRIPT = f"""
import sys, torch, attrkit
from attrkit.testing import toy_problem
{inspect.getsource(outputs)}
toy = toy_problem()
torch.set_num_threads(int(sys.argv[1]))  # the same kernels as the saving process: bit for bit
root, keys = sys.argv[2], sys.argv[3:]
torch.save({{key: outputs(attrkit.load(f"{{root}}/{{key}}", toy.task), toy) for key in keys}}, f"{{root}}/loaded.pt")
"""


def _fitted(spec, tmp_path, out_of_core=False, toy=TOY):
    store = {"store": tmp_path / "fit-store", "memory_budget": BUDGET} if out_of_core else {}
    return attrkit.compose(spec, toy.task).fit(toy.train_loader(5), **store)


def test_a_fresh_process_gives_the_same_results_bit_for_bit(tmp_path):
    expected = {}
    for key, (spec, out_of_core) in CASES.items():
        attributor = _fitted(spec, tmp_path / key, out_of_core)
        if out_of_core:
            assert not any(side.resident for side in attributor.features), key
        expected[key] = outputs(attributor, TOY)
        attributor.save(tmp_path / "saved" / key)
        shutil.rmtree(tmp_path / key, ignore_errors=True)  # the fit store: the save does not depend on it
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(torch.get_num_threads()), str(tmp_path / "saved"), *CASES],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = torch.load(tmp_path / "saved" / "loaded.pt", weights_only=True)
    for key, values in expected.items():
        for name, value in values.items():
            assert torch.equal(loaded[key][name], value), (key, name)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A TRAK attributor fitted out of core, saved (so that it has state.pt and feature chunks)."""
    path = tmp_path_factory.mktemp("saved") / "trak"
    _fitted(TRAK, path.parent, out_of_core=True).save(path)
    return path


def test_another_model_is_refused_naming_what_differs(saved):
    toy = toy_problem()
    with torch.no_grad():
        toy.task.model[2].bias[1] += 1e-3
    with pytest.raises(LoadError, match=r"weights differ in model: 2\.bias\. Load it with the model .* or fit"):
        attrkit.load(saved, toy.task)


def test_the_checkpoints_are_checked(tmp_path):
    attributor = _fitted({"method": "tracin"}, tmp_path, toy=CHECKPOINTS)
    attributor.save(tmp_path / "tracin")
    loaded = attrkit.load(tmp_path / "tracin", CHECKPOINTS.task)
    assert torch.equal(loaded.attribute(CHECKPOINTS.test_loader()), attributor.attribute(CHECKPOINTS.test_loader()))
    checkpoints = [dict(c) for c in CHECKPOINTS.task.checkpoints]
    checkpoints[1]["0.weight"] = checkpoints[1]["0.weight"] * 2
    task = attrkit.AttributionTask(model=CHECKPOINTS.task.model, loss_fn=attrkit.cross_entropy, checkpoints=checkpoints)
    with pytest.raises(LoadError, match=r"checkpoint 1: 0\.weight"):
        attrkit.load(tmp_path / "tracin", task)
    with pytest.raises(LoadError, match="fitted with 2 member"):
        attrkit.load(tmp_path / "tracin", TOY.task)


def _flip_byte(path, offset=-1):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(path):
    manifest = json.loads((path / "attrkit.json").read_text())
    manifest["fitted"]["policy"] = "skip"
    (path / "attrkit.json").write_text(json.dumps(manifest))


def _pickled_state(path):
    """A state.pt holding a pickled object, with checksums made to match: weights_only refuses it."""
    (path / "state.pt").write_bytes(pickle.dumps(TOY))
    manifest = json.loads((path / "attrkit.json").read_text())
    manifest.pop("sha256")
    manifest["state"]["sha256"] = attrkit.saving._sha256(path / "state.pt")
    manifest["sha256"] = attrkit.saving._json_sha256(manifest)
    (path / "attrkit.json").write_text(json.dumps(manifest))


TAMPER = {
    "manifest": (_edit_manifest, "attrkit.json was altered"),
    "state": (lambda path: _flip_byte(path / "state.pt", 100), "state.pt is missing or was altered"),
    "chunk": (lambda path: _flip_byte(next((path / "features" / "member-0").glob("*.npy"))), "match their checksums"),
    "pickle": (_pickled_state, "holds something other than tensors"),
    "deleted": (lambda path: shutil.rmtree(path / "features"), "no features/ folder"),
}


@pytest.mark.parametrize("damage", TAMPER)
def test_a_damaged_save_is_refused(saved, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    attrkit.load(copy, TOY.task)  # intact
    tamper, message = TAMPER[damage]
    tamper(copy)
    with pytest.raises(LoadError, match=message):
        attrkit.load(copy, TOY.task)


@pytest.mark.parametrize("solver", ["cg", "lissa", "datainf"])
def test_solvers_that_read_the_training_data_refuse_to_save(tmp_path, solver):
    attributor = _fitted({"method": "if", "solver": {"name": solver, "regularization": 0.1}}, tmp_path)
    with pytest.raises(SaveError, match=rf"solver '{solver}' cannot be saved: every solve passes over the training "
                                        r"data.*fit it again in the new process.*explicit, arnoldi, kfac, ekfac"):
        attributor.save(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_save_refuses_other_folders_and_a_changed_model(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    toy = toy_problem()
    attributor = _fitted({"method": "grad-dot"}, tmp_path, toy=toy)
    with pytest.raises(SaveError, match="is not a saved attributor"):
        attributor.save(tmp_path / "mine")
    attributor.save(tmp_path / "saved")
    attributor.save(tmp_path / "saved")  # over an earlier save
    assert sorted(os.listdir(tmp_path)) == ["mine", "saved"]
    with torch.no_grad():
        toy.task.model[0].weight.mul_(2)
    with pytest.raises(ModelChangedError):
        attributor.save(tmp_path / "later")
    with pytest.raises(LoadError, match="is not a saved attributor"):
        attrkit.load(tmp_path / "mine", TOY.task)
