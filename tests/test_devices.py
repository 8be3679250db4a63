"""Device strings (`pmopt.policy.check_device`): an unknown name, an accelerator this machine lacks, or an index at
or beyond its device count is one line naming the string, before anything loads. The commands' options that
take a device are tested in test_bad_input (`score --device`, `pm_load.device`, `judge.device`, probe's `device`)."""

from __future__ import annotations

import pytest
import torch

from pmopt.io import PmoptError
from pmopt.policy import check_device

TWO_GPUS = {"cuda": 2}


@pytest.mark.parametrize("device", [None, "cpu", "cpu:0", "cuda", "cuda:0", "cuda:1"])
def test_devices_present_pass(device):
    check_device(device, TWO_GPUS)


@pytest.mark.parametrize(("device", "words"), [
    ("nonsense", ["'nonsense' is not a device", "cpu, cuda, cuda:N, mps or xpu"]),
    ("CUDA", ["'CUDA' is not a device"]),
    ("cuda:", ["'cuda:' is not a device"]),
    ("cuda:-1", ["'cuda:-1' is not a device"]),
    ("meta", ["'meta' is not a device pmopt can run a model on"]),  # torch knows it; it holds no data
    ("cuda:2", ["cuda:2: no such CUDA device", "has 2: cuda:0 to cuda:1"]),
    ("cuda:7", ["cuda:7: no such CUDA device"]),
    ("mps", ["mps: this machine has no MPS (Apple GPU) device"]),
    ("xpu:0", ["xpu:0: this machine has no XPU (Intel GPU) device"]),
])
def test_bad_devices_are_one_line(device, words):
    with pytest.raises(PmoptError) as caught:
        check_device(device, TWO_GPUS)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_one_gpu_names_its_only_device():
    with pytest.raises(PmoptError, match=r"cuda:1: no such CUDA device \(this machine has 1: cuda:0\)"):
        check_device("cuda:1", {"cuda": 1})


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="needs a machine without CUDA devices")
def test_cuda_on_this_machine_without_it_says_why():
    with pytest.raises(PmoptError, match="cuda: this machine has no CUDA device") as caught:
        check_device("cuda")
    if torch.version.cuda is None:
        assert f"torch {torch.__version__} is built without CUDA" in str(caught.value)
    with pytest.raises(PmoptError, match="cuda:7: this machine has no CUDA device"):
        check_device("cuda:7")
