"""occ_audit_ros.devices.resolve_device: the one place 'auto' / 'cuda' / ranks become torch devices."""

import pytest
import torch

from occ_audit_ros.devices import resolve_device


def test_auto_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_malformed_name_raises():
    with pytest.raises(RuntimeError):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="cuda"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rank_picks_a_gpu(monkeypatch):
    n = torch.cuda.device_count()
    assert resolve_device("cuda", rank=n + 0) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("cuda").index == 0
    assert resolve_device("cuda", tf32=True).index == 0 and torch.backends.cuda.matmul.allow_tf32
