"""The epoch count chosen by the spatial cross-validation (tools/epochs_cv.py over network_cv.py runs)."""

import json

import pytest

pytest.importorskip("torch")

NAMES = ["Ctx", "Str"]
FOLDS = {"k": 3, "gap_px": 64}


def _fold(acc):
    scores = {"pixel_accuracy": acc, "macro_f1": acc - 0.05, "f1": {"Ctx": acc, "Str": acc - 0.1}}
    return {"clean": {"raw": {**scores, "pixel_accuracy": acc - 0.04}, "smoothed": scores,
                      "guards": {"cortex_right_of_callosum": {"ok": True}, "hypoth_in_middle": {"ok": acc > 0.85}}},
            "blur1": {"smoothed": {"pixel_accuracy": acc - 0.1}}, "rerendered": {"smoothed": {"f1": {"Ctx": 0.9, "Str": 0.5}}},
            "loss": {"blur1": 0.1, "bin2": 0.09, "rerendered": 0.05}, "train_minutes": 4.0}


def _run(tmp_path, epochs, accs, *, tile_batch=8, folder=None):
    out = tmp_path / (folder or f"e{epochs}")
    out.mkdir()
    res = {"command": f"network_cv --epochs {epochs}", "folds": FOLDS, "seed": 0, "sigma_um": 100.0,
           "head": "logreg", "macs": {"mixup+swa": 6171047},
           "budget": {"epochs": epochs, "tile_batches_per_epoch": 40, "tiles": 12, "tile_batch": tile_batch},
           "candidates": {"mixup+swa": {"recipe": {}, "folds": {str(f): _fold(a) for f, a in enumerate(accs)}}}}
    (out / "results.json").write_text(json.dumps(res))
    return str(out)


def _choices(tmp_path):
    from brainrt_train.final_bundle import Choices

    path = tmp_path / "choices.json"
    path.write_text(json.dumps({"network": "mixup+swa", "recipe": {"context": 4, "mixup": 0.4, "swa_epochs": 2},
                                "budget": {"epochs": 8, "tile_batches_per_epoch": 40, "tile_batch": 8, "tiles": 12},
                                "seed": 0}))
    Choices.read(path)
    return path


def test_each_epoch_count_is_a_candidate_and_the_best_mean_wins_inside_the_grid(tmp_path):
    from brainrt_train.netcv import by_epochs, choose_epochs

    runs = [_run(tmp_path, 16, [0.86, 0.90, 0.88]), _run(tmp_path, 4, [0.80, 0.84, 0.85]),
            _run(tmp_path, 8, [0.91, 0.87, 0.89])]
    res = by_epochs(runs, "mixup+swa")
    assert list(res["candidates"]) == ["mixup+swa 4 ep", "mixup+swa 8 ep", "mixup+swa 16 ep"]
    assert res["budget"]["epochs"] == [4, 8, 16]
    assert res["command"] == "network_cv --epochs 4; network_cv --epochs 8; network_cv --epochs 16"
    e, means, interior = choose_epochs(res)
    assert (e, interior) == (8, True) and means[8] == pytest.approx(0.89)


def test_the_best_count_at_the_grids_edge_writes_no_choices(tmp_path, capsys):
    from tools.epochs_cv import cli

    runs = [_run(tmp_path, 4, [0.80, 0.84, 0.85]), _run(tmp_path, 8, [0.86, 0.87, 0.88])]
    assert cli(["--runs", *runs, "-o", str(tmp_path / "out"), "--choices", str(_choices(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "choices.json: the best epoch count, 8, is at the edge of the grid" in err
    assert (tmp_path / "out" / "REPORT.md").exists() and not (tmp_path / "out" / "choices.json").exists()


def test_an_interior_best_count_is_written_into_the_choices_with_its_grid(tmp_path):
    from brainrt_train.final_bundle import Choices
    from tools.epochs_cv import main

    runs = [_run(tmp_path, 4, [0.80, 0.84, 0.85]), _run(tmp_path, 12, [0.91, 0.90, 0.89]),
            _run(tmp_path, 24, [0.86, 0.87, 0.88])]
    main(["--runs", *runs, "-o", str(tmp_path / "out"), "--choices", str(_choices(tmp_path))])
    c = Choices.read(tmp_path / "out" / "choices.json")
    assert c.budget["epochs"] == 12 and c.budget["tile_batch"] == 8
    assert c.cv["epochs"]["means"] == {"4": 0.83, "12": 0.9, "24": 0.87}
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "| mixup+swa 12 ep | 3 |" in report and (tmp_path / "out" / "epochs.png").stat().st_size > 10000
    grid = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert grid["budget"]["epochs"] == [4, 12, 24] and grid["runs"] == runs


@pytest.mark.parametrize("case", ["budget", "twice"])
def test_runs_that_are_not_one_grid_are_refused_in_one_line(tmp_path, case):
    from brainrt_train.netcv import by_epochs

    a = _run(tmp_path, 8, [0.9, 0.9, 0.9])
    b = (_run(tmp_path, 16, [0.9, 0.9, 0.9], tile_batch=4) if case == "budget"
         else _run(tmp_path, 8, [0.9, 0.9, 0.9], folder="again"))
    with pytest.raises(SystemExit, match="budget per epoch" if case == "budget" else "a second run of 8 epochs"):
        by_epochs([a, b], "mixup+swa")


BUDGET = {"epochs": 2, "tile_batches_per_epoch": 3, "tile_batch": 2, "tiles": 4, "threads": 1}


class _Setup:
    """What fold_image_features reads of a netcv.Setup: the scoring grid's valid cells."""

    class grid:
        valid = None


def _kept(tmp_path, recipe, budget, seed):
    import numpy as np

    from brainrt_train.model import PaperCNN
    from brainrt_train.netcv import keep_fold, trained_as

    model = PaperCNN(3, context=4).eval()
    keep_fold(tmp_path, 1, model, {"mean": 0.4, "std": 0.2}, np.zeros((2, 2, 64), np.float32),
              trained_as(recipe, budget, seed))
    return model


def test_a_kept_fold_network_made_the_same_way_is_used_instead_of_training(tmp_path, monkeypatch):
    """network_cv --keep's networks serve later scoring: the missing images' features come from the kept network
    (no training), the kept clean features are read as they are."""
    import numpy as np
    import torch

    from brainrt_train import netcv

    model = _kept(tmp_path, netcv.CANDIDATES["mixup+swa"], BUDGET, 0)
    monkeypatch.setattr(netcv, "train_on_fold", lambda *a, **k: pytest.fail("trained again"))
    used = []
    monkeypatch.setattr("brainrt_train.tiles.grid_features",
                        lambda m, img, **k: used.append((m, k["norm"])) or (np.full((2, 2, 64), img, np.float32), None))
    full = {**netcv.BASE, **netcv.CANDIDATES["mixup+swa"]}  # a choices file's full recipe names the same network
    of = netcv.fold_image_features(_Setup, full, {**BUDGET, "threads": 2}, {"clean": lambda: 7, "r0": lambda: 5},
                                   cache=tmp_path, log=lambda m: None)
    got = of(1)
    assert got["clean"].max() == 0 and got["r0"].min() == 5 and (tmp_path / "fold1.r0.npy").exists()
    (m, norm), = used
    assert norm == {"mean": 0.4, "std": 0.2}
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("other", [{"epochs": 4}, {"seed": 1}, {"recipe": {"mixup": 0.2}}])
def test_a_kept_network_made_otherwise_is_trained_again(tmp_path, monkeypatch, other):
    from brainrt_train import netcv

    _kept(tmp_path, netcv.CANDIDATES["mixup+swa"], BUDGET, 0)
    monkeypatch.setattr(netcv, "train_on_fold", lambda *a, **k: ("trained", "norm", 60.0, None, None))
    recipe = {**netcv.CANDIDATES["mixup+swa"], **other.get("recipe", {})}
    budget = {**BUDGET, **{k: v for k, v in other.items() if k == "epochs"}}
    got = netcv.fold_network(None, recipe, budget, 1, seed=other.get("seed", 0), kept=tmp_path, log=lambda m: None)
    assert got == ("trained", "norm")
