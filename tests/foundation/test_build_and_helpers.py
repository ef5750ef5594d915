import pytest
import torch

from fastvit import _ext
from fastvit.testing import assert_close, low_precision_tol, run_ranks


def test_cpp_build_report_and_pointer_convention():
    info = _ext.cpp().build_info()
    assert info["openmp_max_threads"] >= 1 and info["simd_compiled"] and info["compiler"]
    x = torch.randn(10007, dtype=torch.float32)
    assert abs(_ext.cpp().sum_f32(x.data_ptr(), x.numel()) - x.double().sum().item()) < 1e-3


def test_cuda_module_imports_without_gpu_and_errors_clearly():
    mod = _ext.cuda_module()
    if mod is None:
        pytest.skip("fastvit._C_cuda was not built: no CUDA toolkit at install time")
    assert "80" in mod.build_info()["archs"] and "90a" in mod.build_info()["archs"]
    if torch.cuda.is_available():
        assert len(mod.devices()) == torch.cuda.device_count()
    else:
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            mod.devices()


def test_assert_close_reports_errors_and_nans():
    a = torch.tensor([1.0, 2.0, float("nan")])
    with pytest.raises(AssertionError, match=r"1/3 elements.*max abs err 0.000e\+00.*1 NaN / 0 inf"):
        assert_close(a, torch.tensor([1.0, 2.0, 3.0]), atol=1e-3)
    with pytest.raises(AssertionError, match="max abs err 5.000e-01"):
        assert_close(torch.tensor([1.5]), torch.tensor([1.0]), atol=0.1)
    assert_close(torch.tensor([1.05]), torch.tensor([1.0]), atol=0.1)


def test_low_precision_tol_scales_with_dtype():
    x = torch.randn(64, 64)
    tol16 = low_precision_tol(lambda a: a @ a, [x], torch.bfloat16)
    tol32 = low_precision_tol(lambda a: a @ a, [x], torch.float32)
    assert tol16 > 10 * tol32 > 0


def _allreduce_rank(rank, world_size, base):
    t = torch.tensor([float(rank + base)])
    torch.distributed.all_reduce(t)
    return {"rank": rank, "sum": t.item()}


@pytest.mark.multirank
def test_run_ranks_returns_each_result():
    out = run_ranks(_allreduce_rank, 2, 10)
    assert [o["rank"] for o in out] == [0, 1]
    assert all(o["sum"] == 21.0 for o in out)
