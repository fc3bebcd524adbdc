import pytest

from mmerkit.config import OptimConfig, TrainConfig, load_config, parse_override, read_user_config
from mmerkit.errors import ConfigError
from mmerkit.models.base import build_model_config, create_model
from mmerkit.registry import Registry


def test_layering_and_overrides(tmp_path):
    user = tmp_path / "u.yaml"
    user.write_text("optim:\n  lr: 0.002\ntrain:\n  epochs: 7\n")
    cfg = load_config("early_fusion", "synthetic", user, ["train.epochs=3", "model.hidden_size=32"])
    assert cfg.optim.lr == 0.002 and cfg.train.epochs == 3
    assert cfg.model["hidden_size"] == 32 and cfg.model["name"] == "early_fusion"
    assert load_config("early_fusion").optim.lr == 1e-3  # packaged model recipe
    assert build_model_config("early_fusion", load_config("early_fusion").model).layers == 2  # class default


def test_override_values_are_typed():
    assert parse_override("optim.lr=1e-4") == {"optim": {"lr": 1e-4}}
    assert parse_override("train.deterministic=true") == {"train": {"deterministic": True}}
    assert parse_override("data.modalities=[text, audio]") == {"data": {"modalities": ["text", "audio"]}}


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key config.optim.lrr. Did you mean 'lr'"),
    ("trian.epochs=1", "Did you mean 'train'"),
    ("train.epochs=abc", "train.epochs"),
    ("novalue", "expected key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config("early_fusion", overrides=[override])


def test_unknown_model_key_suggests():
    with pytest.raises(ConfigError, match="unknown key model.hiden_size. Did you mean 'hidden_size'"):
        build_model_config("early_fusion", {"hiden_size": 3})


def test_unknown_model_and_preset_suggest():
    with pytest.raises(KeyError, match="Did you mean 'early_fusion'"):
        create_model("early_fusio", None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="neither a file nor a packaged preset"):
        read_user_config("no-such-preset")


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optimm:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'optimm'. Did you mean 'optim'"):
        load_config("early_fusion", config=f)
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("early_fusion", config=f)


def test_registry_duplicates_and_lookup():
    reg = Registry("thing")
    reg.register("a", paper="p", year=1)(int)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", paper="p", year=1)(float)
    assert reg.names() == ["a"] and "a" in reg


def test_former_field_names_still_load_and_both_names_are_refused():
    old = build_model_config("early_fusion", {"hidden": 32, "heads": 2, "ffn": 64})
    assert (old.hidden_size, old.num_heads, old.intermediate_size) == (32, 2, 64)
    assert build_model_config("tailor", {"cross_layers": 2}).fusion_layers == 2
    with pytest.raises(ConfigError, match="model.hidden is the former name of model.hidden_size"):
        build_model_config("mult", {"hidden": 30, "hidden_size": 30})


def test_shared_hyper_parameters_have_one_name():
    from mmerkit.models.base import list_models, model_class

    shared = {"hidden_size", "num_heads", "intermediate_size", "layers"}
    former = {"hidden", "heads", "ffn", "d_model", "uni_layers", "tri_layers", "cross_layers"}
    for name in list_models():
        fields = set(model_class(name).config_class.model_fields)
        assert not fields & former, name
        if model_class(name).closed_form:
            continue
        assert {"hidden_size", "num_heads", "layers"} <= fields, name
        assert shared <= fields or name == "mult", name  # MulT's FFN is 4 x hidden_size, fixed


def test_model_yamls_do_not_repeat_the_class_defaults():
    from mmerkit.config import packaged_yaml
    from mmerkit.models.base import list_models, model_class

    for name in list_models():
        defaults = model_class(name).config_class().model_dump()
        section = dict(packaged_yaml("models", name).get("model", {}))
        section.pop("name", None)
        repeated = {k for k, v in section.items() if defaults.get(k) == v}
        assert not repeated, f"configs/models/{name}.yaml repeats {repeated}"
    # and the optim / train sections only set what differs from OptimConfig / TrainConfig
    for name in list_models():
        for part, cls in (("optim", OptimConfig), ("train", TrainConfig)):
            given = packaged_yaml("models", name).get(part, {})
            base = cls().model_dump()
            same = {k for k, v in given.items() if base[k] == (tuple(v) if isinstance(v, list) else v)}
            assert not same, f"configs/models/{name}.yaml repeats the {part} defaults {same}"


def test_ablation_presets_come_from_one_table():
    from mmerkit.config import ablation_table, packaged_names
    from mmerkit.models.carat import ABLATIONS

    assert ABLATIONS == ablation_table("carat") and len(ABLATIONS) == 11
    assert set(ABLATIONS) <= set(packaged_names("presets"))
    base = load_config("carat").model
    for name, changes in ABLATIONS.items():
        cfg = load_config(config=name)
        assert cfg.model_name == "carat" and cfg.model == {**base, **changes}, name


def test_every_attention_model_refuses_heads_that_do_not_divide_hidden():
    """One check in ModelConfig serves every model whose config has hidden_size and num_heads."""
    from pydantic import ValidationError

    from mmerkit.models.base import list_models, model_class

    checked = []
    for name in list_models():
        cfg = model_class(name).config_class
        if {"hidden_size", "num_heads"} <= set(cfg.model_fields):
            with pytest.raises(ValidationError, match="hidden_size 30 must be divisible by num_heads 4"):
                cfg(hidden_size=30, num_heads=4)
            checked.append(name)
    assert {"carat", "tailor", "lddu", "univa", "mult"} <= set(checked)
