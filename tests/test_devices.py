"""Execution providers: --device auto|cpu|cuda (CUDA mocked)."""

from __future__ import annotations

import tomllib

import pytest
from click.testing import CliRunner

import brainrt
from brainrt.bundle import load as bundle_module
from brainrt.cli import main
from brainrt.errors import BrainrtError
from conftest import ROOT

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture
def with_cuda(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(bundle_module, "_cuda_usable", lambda: True)


@pytest.fixture
def without_cuda(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])


def test_auto_and_cuda_choose_cuda_first_where_it_is_usable(with_cuda):
    assert bundle_module.providers("auto") == [CUDA, CPU]
    assert bundle_module.providers("cuda") == [CUDA, CPU]
    assert bundle_module.providers("cpu") == [CPU]


def test_auto_falls_back_to_the_cpu_and_cuda_says_why(without_cuda):
    assert bundle_module.providers("auto") == [CPU]
    with pytest.raises(BrainrtError, match="cuda") as info:
        bundle_module.providers("cuda")
    assert "\n" not in str(info.value) and "gpu" in str(info.value)


def test_cuda_listed_but_unusable_falls_back(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(bundle_module, "_cuda_usable", lambda: False)
    assert bundle_module.providers("auto") == [CPU]
    with pytest.raises(BrainrtError):
        bundle_module.providers("cuda")


def test_unknown_device_is_a_parameter_error():
    with pytest.raises(BrainrtError, match="'device'"):
        bundle_module.providers("tpu")


def test_bundle_load_passes_the_chosen_providers(with_cuda, monkeypatch, tiny_bundle_path):
    import onnxruntime as ort

    seen, real = [], ort.InferenceSession

    def session(path, opts=None, providers=None):
        seen.append(list(providers))
        return real(path, opts, providers=[CPU])  # no GPU here: run on the CPU

    monkeypatch.setattr(ort, "InferenceSession", session)
    b = brainrt.Bundle.load(tiny_bundle_path, device="cuda", heads=False)
    b.predictor("dense", stride=16)  # the dense sessions take the same providers
    assert seen and all(p == [CUDA, CPU] for p in seen), seen
    brainrt.Bundle.load(tiny_bundle_path, device="cpu", heads=False)
    assert seen[-1] == [CPU]


def test_cli_device_option(tiny_bundle_path, slice_tif, tmp_path, without_cuda):
    r = CliRunner().invoke(main, ["featurize", str(slice_tif), "-m", str(tiny_bundle_path), "--stride", "32",
                                  "--device", "cpu", "-o", str(tmp_path / "f.zarr")])
    assert r.exit_code == 0, (r.output, r.exception)
    r = CliRunner().invoke(main, ["featurize", str(slice_tif), "-m", str(tiny_bundle_path), "--device", "cuda",
                                  "-o", str(tmp_path / "g.zarr")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "cuda" in r.stderr, r.stderr


def test_onnxruntime_gpu_is_not_a_hard_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split(";")[0].split(">")[0].split("=")[0].strip() for d in project["dependencies"]]
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names
    assert any(d.startswith("onnxruntime-gpu") for d in project["optional-dependencies"]["gpu"])
