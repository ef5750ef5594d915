"""`fastvit train [RECIPE|FILE.yaml] [key=value ...]`: train, then evaluate the demo with kNN."""

import json

from fastvit.config import load_config
from fastvit.train.curves import CURVES_FILE


def split_recipe(argv, default="demo"):
    """(recipe, overrides): the first argument is a recipe unless it is a key=value override."""
    if argv and "=" not in argv[0]:
        return argv[0], argv[1:]
    return default, argv


def main(argv):
    recipe, overrides = split_recipe(argv)
    cfg = load_config(recipe, overrides)
    from fastvit.train.loop import train

    run_dir = train(cfg)
    if cfg.data.val_source and cfg.train.steps > 0:
        from fastvit.eval.run import evaluate_run, is_main_process

        result = evaluate_run(run_dir, cfg, "knn", compare_random_init=True)
        if is_main_process():
            print(json.dumps({**result, "curves": str(run_dir / CURVES_FILE)}))
    return 0
