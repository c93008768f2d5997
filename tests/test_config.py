import pytest

from ifss.config import RunConfig, build_config, dump_yaml, from_dict, load_yaml
from ifss.errors import IfssError


def test_defaults_and_overrides(tmp_path):
    cfg = build_config(None, ["task=5-1", "train.lr=0.001", "data.batch_size=4", "params.kd=10"])
    assert cfg.task == "5-1" and cfg.train.lr == 0.001 and cfg.data.batch_size == 4
    assert cfg.params == {"kd": 10}
    assert cfg.model.backbone == "resnet_tiny"
    path = tmp_path / "run.yaml"
    path.write_text(dump_yaml(cfg))
    assert from_dict(RunConfig, load_yaml(path)) == cfg


def test_overrides_beat_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: 5-2\ntrain:\n  lr: 0.5\n")
    cfg = build_config(path, ["train.lr=0.25"])
    assert cfg.task == "5-2" and cfg.train.lr == 0.25


def test_resolved_pooling_size():
    cfg = build_config(None, ["data.crop_size=512", "model.output_stride=16"]).resolved()
    assert cfg.model.pooling_size == 32


@pytest.mark.parametrize("pair, message", [
    ("train.lrr=1", "unknown config key 'train.lrr'; did you mean train.lr"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("train.lr=fast", "train.lr' needs a number"),
    ("step=1.5", "'step' needs an integer"),
    ("model.pooling=maybe", "needs true or false"),
    ("train=3", "is a section"),
])
def test_bad_keys_and_values(pair, message):
    with pytest.raises(IfssError, match=message):
        build_config(None, [pair])


def test_bad_file(tmp_path):
    with pytest.raises(IfssError, match="does not exist"):
        build_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(IfssError, match="must hold a mapping"):
        build_config(bad)
