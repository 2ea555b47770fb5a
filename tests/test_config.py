import pytest

from fisherpack.config import CompressConfig, PipelineConfig
from fisherpack.errors import ConfigError


def test_configs_round_trip_through_dicts():
    cfg = PipelineConfig(
        model="lenet300", rounds=3, compress=CompressConfig(rate=0.9, group_bits=(8, 4), include=("fc*",))
    )
    again = PipelineConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.compress.group_bits == (8, 4) and again.compress.include == ("fc*",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate": 1.0}, "rate must be in"),
        ({"rate": -0.5}, "rate must be in"),
        ({"bits": 0}, "bits must be in"),
        ({"bits": 17}, "bits must be in"),
        ({"bits": float("nan")}, "bits must be in"),
        ({"groups": 0}, "groups must be in"),
        ({"group_bits": ()}, "group_bits needs"),
        ({"group_bits": (4, 0)}, "group_bits needs"),
        ({"criterion": "size"}, "unknown pruning criterion"),
        ({"allocation": "uniform", "bits": 4.5}, "uniform needs whole bits"),
        ({"version": 2}, "version 2 is not supported"),
    ],
)
def test_impossible_compress_configs_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        CompressConfig(**changes)


def test_unknown_keys_and_versions_are_refused():
    with pytest.raises(ConfigError, match="unknown keys: colour"):
        CompressConfig.from_dict({"colour": "red"})
    with pytest.raises(ConfigError, match="version 7"):
        PipelineConfig.from_dict({"version": 7})
    with pytest.raises(ConfigError, match="rounds must be"):
        PipelineConfig(rounds=0)
    with pytest.raises(ConfigError, match="Fisher estimator"):
        PipelineConfig(fisher="hessian")


def test_per_layer_overrides_round_trip_through_json_and_are_validated():
    import json

    cfg = CompressConfig(overrides=[["conv1.*", {"bits": 8.0}], ("fc*", {"rate": 0.5, "bits": 3})])
    assert cfg.overrides == (("conv1.*", {"bits": 8}), ("fc*", {"rate": 0.5, "bits": 3}))
    again = CompressConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.overrides[0][1]["bits"], int)
    assert cfg.layer_settings(["conv1.weight", "fc1.weight"]) == {
        "conv1.weight": {"bits": 8},
        "fc1.weight": {"rate": 0.5, "bits": 3},
    }
    for bad, message in [
        ((("fc*", {"rate": 1.0}),), "rate must be in"),
        ((("fc*", {"bits": 4.5}),), "bits must be a whole number"),
        ((("fc*", {"bits": True}),), "bits must be a whole number"),
        ((("fc*", {"groups": 2}),), "unknown keys: groups"),
        ((("fc*", {}),), "overrides must be"),
        (("fc*",), "overrides must be"),
        ("fc*", "overrides must be"),
    ]:
        with pytest.raises(ConfigError, match=message):
            CompressConfig(overrides=bad)
