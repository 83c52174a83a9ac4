import pytest
import torch

from darts_nas.errors import ConfigError
from darts_nas.genotype import PRIMITIVES, Genotype
from darts_nas.spaces import SEARCH_SPACES
from darts_nas.supernet import MixedOp, Supernet


def test_paper_supernet_size():
    # REFERENCE section 6: C=16, 8 cells, 10 classes.
    model = Supernet(C=16, num_classes=10, layers=8)
    assert sum(p.numel() for p in model.weights()) == 1_930_618
    assert sum(p.numel() for p in model.arch_parameters()) == 2 * 14 * 8


def test_arch_parameters_and_weights_partition_parameters():
    model = Supernet(C=4, num_classes=3, layers=3)
    params = {id(p) for p in model.parameters()}
    arch = {id(p) for p in model.arch_parameters()}
    weights = {id(p) for p in model.weights()}
    assert arch | weights == params
    assert not arch & weights
    assert len(arch) == 2
    assert {n for n, _ in model.named_parameters() if id(dict(model.named_parameters())[n]) in arch} == {
        "alphas_normal", "alphas_reduce"}


def test_batchnorm_is_not_affine_inside_the_cells():
    model = Supernet(C=4, num_classes=3, layers=3)
    bns = [m for m in model.cells.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.affine for bn in bns)
    assert model.stem[1].affine  # as in the reference code, see Supernet.__init__


@pytest.mark.parametrize("in_channels,size,classes", [(1, 8, 10), (3, 15, 7), (4, 33, 2), (3, 1, 5)])
def test_shapes_follow_the_data(in_channels, size, classes):
    model = Supernet(C=4, num_classes=classes, layers=4, steps=2, in_channels=in_channels)
    logits = model(torch.randn(3, in_channels, size, size + 2))
    assert logits.shape == (3, classes)


def test_none_is_not_built_and_contributes_nothing():
    torch.manual_seed(0)
    mixed = MixedOp(4, 1, PRIMITIVES)
    assert len(mixed.ops) == len(PRIMITIVES) - 1
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    w_no_none = w.clone()
    w_no_none[0] = 123.0  # whatever 'none' weighs, the output is the same
    assert torch.equal(mixed(x, w), mixed(x, w_no_none))


def test_mixed_op_is_the_weighted_sum_of_its_ops():
    torch.manual_seed(0)
    prims = ("skip_connect", "avg_pool_3x3")
    mixed = MixedOp(3, 1, prims).eval()
    x = torch.randn(1, 3, 5, 5)
    w = torch.tensor([0.25, 0.75])
    expected = 0.25 * x + 0.75 * mixed.ops[1](x)
    assert torch.allclose(mixed(x, w), expected)


def test_candidate_list_is_configurable_and_validated():
    model = Supernet(C=4, num_classes=3, layers=2, primitives=("skip_connect", "sep_conv_3x3"))
    assert model.alphas_normal.shape == (14, 2)
    assert isinstance(model.genotype(), Genotype)
    with pytest.raises(ConfigError, match="valid"):
        Supernet(C=4, num_classes=3, layers=2, primitives=("skip_connect", "conv_9x9"))
    with pytest.raises(ConfigError, match="twice"):
        Supernet(C=4, num_classes=3, layers=2, primitives=("skip_connect", "skip_connect"))
    with pytest.raises(ConfigError, match="other than 'none'"):
        Supernet(C=4, num_classes=3, layers=2, primitives=("none",))


def test_nodes_are_configurable():
    model = Supernet(C=4, num_classes=3, layers=2, steps=5)
    assert model.alphas_reduce.shape == (20, 8)
    g = model.genotype()
    assert len(g.normal) == 10 and g.normal_concat == (2, 3, 4, 5, 6)


def test_genotype_follows_alphas():
    model = Supernet(C=4, num_classes=3, layers=3)
    with torch.no_grad():
        model.alphas_normal.zero_()
        model.alphas_normal[:, PRIMITIVES.index("sep_conv_5x5")] = 5.0
    g = model.genotype()
    assert all(op == "sep_conv_5x5" for op, _ in g.normal)


def test_search_space_registry():
    model = SEARCH_SPACES.get("darts")(C=4, num_classes=3, layers=2, steps=2, in_channels=1)
    assert isinstance(model, Supernet)
    with pytest.raises(ConfigError, match="darts"):
        SEARCH_SPACES.get("nasbench201")
