"""`fastvit export` of runs saved by 2 gloo ranks under tp=2 and pp=2: through transformers they give the features
`fastvit eval` computes for them (fp32 rounding) and those of the same run trained in one process (to the
rounding of the parallel sums over 2 steps), so the fused qkv / w12 rows and the pipeline stages' blocks come
back in the one-process order."""

import pytest
import torch
from export_cases import STEPS, eval_features, eval_images, hf_features
from tiny import tiny_config

from fastvit.cli import main as cli
from fastvit.testing import assert_close, run_ranks
from fastvit.train.loop import train

LAYOUTS = {
    "tp2": ("parallel.tp=2", "parallel.data_parallel=fsdp"),
    "pp2": ("parallel.pp=2", "parallel.pp_schedule=1f1b"),
}
SAME = ("objective.web_dino.koleo_weight=0",)  # a pipeline computes KoLeo within each microbatch


def _train_rank(rank, world_size, out, extra):
    torch.set_num_threads(1)
    train(tiny_config(out, *STEPS, *SAME, *extra))


@pytest.mark.multirank
@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_run_saved_by_two_ranks_exports_the_one_process_features(tmp_path, layout):
    two = tmp_path / layout
    run_ranks(_train_rank, 2, str(two), LAYOUTS[layout])
    one = tmp_path / "one"
    train(tiny_config(one, *STEPS, *SAME))
    assert cli(["export", str(two), str(tmp_path / "hf")]) == 0
    got, _ = hf_features(tmp_path / "hf", eval_images())
    assert_close(got, eval_features(two), atol=2e-5, name=f"{layout}: HF vs fastvit eval")
    assert_close(got, eval_features(one), atol=1e-3, name=f"{layout}: HF vs the one-process run")
    assert cli(["export", str(two), str(tmp_path / "full.pth"), "--heads"]) == 0
