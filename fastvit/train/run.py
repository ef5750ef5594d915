"""`fastvit train [RECIPE|FILE.yaml] [key=value ...]`: train, then evaluate the demo with kNN."""

import json

from fastvit.config import load_config
from fastvit.train.curves import CURVES_FILE


def split_recipe(argv, default="demo"):
    """(recipe, overrides): the first argument is a recipe unless it is a key=value override."""
    if argv and "=" not in argv[0]:
        return argv[0], argv[1:]
    return default, argv


def final_eval(run_dir, cfg):
    """The kNN of the run's last checkpoint beside a random initialisation, on the training device: on one process,
    or under torchrun on every rank from its shards (fastvit.eval.run.evaluate_run_sharded), so no rank
    reads the whole model."""
    from fastvit.eval.run import evaluate_run, evaluate_run_sharded
    from fastvit.parallel.distributed import init_distributed
    from fastvit.train import checkpoint as ckpt

    _, world, device = init_distributed(cfg.parallel.timeout_s)  # the training's process group, if any
    if world > 1:
        last = ckpt.latest_checkpoint(run_dir)
        return evaluate_run_sharded(run_dir, cfg, "knn", checkpoint=last, device=device, compare_random_init=True)
    return evaluate_run(run_dir, cfg, "knn", compare_random_init=True, device=device)


def main(argv):
    recipe, overrides = split_recipe(argv)
    cfg = load_config(recipe, overrides)
    from fastvit.train.loop import train

    run_dir = train(cfg)
    if cfg.data.val_source and cfg.train.steps > 0:
        from fastvit.eval.run import is_main_process

        result = final_eval(run_dir, cfg)
        if is_main_process():
            print(json.dumps({**result, "curves": str(run_dir / CURVES_FILE)}))
    return 0
