import pytest

from mmerkit.config import load_config, parse_override, read_user_config
from mmerkit.errors import ConfigError
from mmerkit.models.base import build_model_config, create_model
from mmerkit.registry import Registry


def test_layering_and_overrides(tmp_path):
    user = tmp_path / "u.yaml"
    user.write_text("optim:\n  lr: 0.002\ntrain:\n  epochs: 7\n")
    cfg = load_config("early_fusion", "synthetic", user, ["train.epochs=3", "model.hidden=32"])
    assert cfg.optim.lr == 0.002 and cfg.train.epochs == 3
    assert cfg.model["hidden"] == 32 and cfg.model["name"] == "early_fusion"
    assert load_config("early_fusion").model["layers"] == 2  # packaged model default


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
    with pytest.raises(ConfigError, match="unknown key model.hiden. Did you mean 'hidden'"):
        build_model_config("early_fusion", {"hiden": 3})


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
