import pytest
import torch

from fisherpack import models
from fisherpack.errors import ConfigError


@pytest.mark.parametrize(("name", "params"), [("lenet5", 431_080), ("lenet300", 266_610)])
def test_parameter_counts_match_the_literature(name, params):
    model = models.build(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet5_layer_shapes_are_caffes():
    shapes = {n: tuple(p.shape) for n, p in models.build("lenet5").named_parameters()}
    assert shapes == {
        "conv1.weight": (20, 1, 5, 5),
        "conv1.bias": (20,),
        "conv2.weight": (50, 20, 5, 5),
        "conv2.bias": (50,),
        "fc1.weight": (500, 800),
        "fc1.bias": (500,),
        "fc2.weight": (10, 500),
        "fc2.bias": (10,),
    }


def test_unknown_model_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="unknown model 'lenet6'.*lenet300, lenet5"):
        models.build("lenet6")
