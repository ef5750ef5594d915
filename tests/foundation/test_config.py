import pytest
import yaml

from fastvit.config import Config, apply_overrides, load_config, read_config, recipe_names, valid_keys, write_config


def test_overrides_are_typed():
    cfg = apply_overrides(
        Config(),
        [
            "model.name=vit_b",
            "train.steps=12",
            "optim.lr=1e-4",
            "parallel.compile=true",
            "data.global_crops_scale=[0.4, 1]",
            "model.layerscale_init=null",
        ],
    )
    assert cfg.model.name == "vit_b"
    assert cfg.train.steps == 12 and isinstance(cfg.train.steps, int)
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.parallel.compile is True
    assert cfg.data.global_crops_scale == (0.4, 1.0)
    assert cfg.model.layerscale_init is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stpes=3", "did you mean 'train.steps'"),
        ("modle.name=vit_b", "did you mean 'model.name'"),
        ("train.steps=ten", "train.steps expects an integer, got 'ten'"),
        ("train.steps=1.5", "expects an integer"),
        ("optim.lr=fast", "optim.lr expects a number"),
        ("parallel.compile=3", "expects true or false"),
        ("model.mlp=relu", "is not one of '', 'swiglu', 'gelu'"),
        ("data.local_crops_scale=[0.1]", "expects a list of 2 values"),
        ("train.steps", "is not of the form key=value"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        apply_overrides(Config(), [override])


def test_every_shipped_recipe_loads_and_round_trips(tmp_path):
    assert "demo" in recipe_names()
    for name in recipe_names():
        cfg = load_config(name)
        write_config(cfg, tmp_path / f"{name}.yaml")
        assert read_config(tmp_path / f"{name}.yaml") == cfg


def test_recipe_file_and_overrides_compose(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "vit_l"}, "train": {"steps": 7}}))
    cfg = load_config(str(path), ["train.steps=9"])
    assert (cfg.model.name, cfg.train.steps) == ("vit_l", 9)


def test_bad_recipe_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'dmeo'; did you mean 'demo'"):
        load_config("dmeo")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stesp: 3\n")
    with pytest.raises(ValueError, match="did you mean 'train.steps'"):
        load_config(str(bad))


def test_contract_keys_exist():
    keys = set(valid_keys())
    contract = {"model.name", "data.source", "data.val_source", "train.out", "train.steps", "train.batch_size"}
    contract |= {"train.seed", "train.log_every", "train.checkpoint_every", "parallel.dp", "parallel.tp", "parallel.pp"}
    assert contract <= keys
