import pytest
import torch
from torch import nn

from darts_nas.errors import ConfigError
from darts_nas.genotype import Genotype, list_cells, load_cell
from darts_nas.network import (
    NETWORKS,
    AuxiliaryHeadCIFAR,
    AuxiliaryHeadImageNet,
    Cell,
    NetworkCIFAR,
    NetworkImageNet,
    build_network,
    count_auxiliary_parameters,
    count_multiply_adds,
    count_parameters,
    drop_path,
)


# ---------------------------------------------------------------------------------------------
# Sizes of the paper-scale networks (REFERENCE section 6); construction only, no forward passes
# ---------------------------------------------------------------------------------------------


def test_darts_v2_cifar_exact_sizes():
    model = NetworkCIFAR(36, 10, 20, True, load_cell("darts_v2"))
    assert count_parameters(model) == 3_349_342
    assert count_parameters(model, exclude_auxiliary=False) == 3_825_768
    assert count_auxiliary_parameters(model) == 3_825_768 - 3_349_342
    assert sum(p.numel() for p in model.parameters()) == 3_825_768


def test_auxiliary_is_not_counted_when_absent():
    model = NetworkCIFAR(36, 10, 20, False, load_cell("darts_v2"))
    assert not hasattr(model, "auxiliary_head")
    assert count_parameters(model) == count_parameters(model, exclude_auxiliary=False) == 3_349_342
    assert count_auxiliary_parameters(model) == 0


@pytest.mark.parametrize("name,millions", [
    ("darts_v1", 3.169), ("pc_darts_cifar", 3.635), ("pc_darts_image", 3.722), ("pdarts", 3.434),
    ("drnas_cifar10", 4.099), ("nasnet", 3.831), ("amoebanet", 3.145),
])
def test_cifar_sizes(name, millions):
    model = NetworkCIFAR(36, 10, 20, True, load_cell(name))
    assert round(count_parameters(model) / 1e6, 3) == millions


@pytest.mark.parametrize("name,millions", [
    ("darts_v2", 4.719), ("darts_v1", 4.510), ("pc_darts_cifar", 5.271), ("pc_darts_image", 5.342),
    ("pdarts", 4.944),
])
def test_imagenet_sizes(name, millions):
    model = NetworkImageNet(48, 1000, 14, True, load_cell(name))
    assert round(count_parameters(model) / 1e6, 3) == millions


def test_imagenet_darts_v2_multiply_adds():
    # REFERENCE section 6: conv + linear multiply-adds at 224x224 are about 530M (measured
    # 529,911,552); the paper's 574M counts more than conv and linear.
    model = NetworkImageNet(48, 1000, 14, True, load_cell("darts_v2"))
    madds = count_multiply_adds(model, (1, 3, 224, 224))
    assert abs(madds - 530e6) < 0.02 * 530e6


# ---------------------------------------------------------------------------------------------
# Tiny networks: shapes, auxiliary logits, drop-path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_cells())
@pytest.mark.parametrize("kind,size", [("cifar", 8), ("cifar", 32), ("imagenet", 32), ("imagenet", 224)])
def test_every_published_cell_runs(name, kind, size):
    torch.manual_seed(0)
    model = build_network(kind, load_cell(name), C=4, layers=3, num_classes=5, auxiliary=True)
    model.drop_path_prob = 0.2
    logits, logits_aux = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 5) and logits_aux.shape == (2, 5)
    (logits.sum() + logits_aux.sum()).backward()
    model.eval()
    logits, logits_aux = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 5) and logits_aux is None


def test_cells_with_other_concats_track_their_channels():
    # NASNet: normal cell concatenates 5 nodes, reduction cell 3 nodes; AmoebaNet 3 and 3.
    for name, (m_normal, m_reduce) in (("nasnet", (5, 3)), ("amoebanet", (3, 3)), ("darts_v2", (4, 4))):
        model = NetworkCIFAR(4, 3, 5, False, load_cell(name))
        assert [cell.reduction for cell in model.cells] == [False, True, False, True, False]
        assert [cell.C for cell in model.cells] == [4, 8, 8, 16, 16]
        assert [cell.multiplier for cell in model.cells] == [m_normal, m_reduce, m_normal, m_reduce, m_normal]
        assert model.classifier.in_features == 16 * m_normal


@pytest.mark.parametrize("kind", ["cifar", "imagenet"])
@pytest.mark.parametrize("height,width", [(15, 15), (33, 33), (9, 14), (1, 1)])
def test_odd_image_sizes(kind, height, width):
    torch.manual_seed(0)
    model = build_network(kind, load_cell("nasnet"), C=4, layers=3, num_classes=3, auxiliary=True)
    logits, logits_aux = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 3) and logits_aux.shape == (2, 3)


def test_reduction_cell_halves_odd_sizes_by_ceil():
    torch.manual_seed(0)
    g = load_cell("amoebanet")
    cell = Cell(g.reduce, g.reduce_concat, 6, 6, 4, reduction=True, reduction_prev=False)
    out = cell(torch.randn(2, 6, 15, 15), torch.randn(2, 6, 15, 15))
    assert out.shape == (2, 3 * 4, 8, 8)


@pytest.mark.parametrize("kind,size", [("cifar", 8), ("imagenet", 16)])
def test_grayscale_input(kind, size):
    model = build_network(kind, load_cell("darts_v1"), C=4, layers=3, num_classes=7, auxiliary=False,
                          in_channels=1)
    logits, _ = model(torch.randn(2, 1, size, size))
    assert logits.shape == (2, 7)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, size, size))


def test_aux_logits_only_in_training_with_auxiliary():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    with_aux = NetworkCIFAR(4, 3, 3, True, load_cell("darts_v2"))
    without = NetworkCIFAR(4, 3, 3, False, load_cell("darts_v2"))
    assert with_aux(x)[1].shape == (2, 3)
    assert without(x)[1] is None
    with_aux.eval()
    without.eval()
    assert with_aux(x)[1] is None
    assert without(x)[1] is None


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_few_layers(layers):
    torch.manual_seed(0)
    model = NetworkCIFAR(4, 3, layers, True, load_cell("darts_v2"))
    reductions = [i for i, cell in enumerate(model.cells) if cell.reduction]
    assert reductions == sorted({layers // 3, 2 * layers // 3})
    logits, logits_aux = model(torch.randn(2, 3, 8, 8))
    assert logits.shape == (2, 3) and logits_aux.shape == (2, 3)


def test_aux_head_is_attached_after_the_second_reduction():
    model = NetworkCIFAR(4, 3, 6, True, load_cell("darts_v2"))
    assert model.aux_index == 4 and model.cells[4].reduction
    seen = []
    model.auxiliary_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    model(torch.randn(2, 3, 16, 16))
    assert seen == [(2, 4 * 16, 4, 4)]  # output of cell 4: 16 channels x 4 nodes at 16/4


@pytest.mark.parametrize("head_cls,size,has_bn2", [(AuxiliaryHeadCIFAR, 8, True),
                                                   (AuxiliaryHeadImageNet, 7, False)])
def test_aux_head_at_standard_size_is_the_paper_layout(head_cls, size, has_bn2):
    torch.manual_seed(0)
    head = head_cls(6, 5).eval()
    for bn in head.modules():
        if isinstance(bn, nn.BatchNorm2d):  # non-trivial statistics so a BN mix-up shows
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 6, size, size)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == (2 if has_bn2 else 1)
    stride = 3 if head_cls is AuxiliaryHeadCIFAR else 2
    h = nn.functional.avg_pool2d(torch.relu(x), 5, stride=stride, count_include_pad=False)
    assert h.shape[-2:] == (2, 2)
    h = torch.relu(bns[0](convs[0](h)))
    h = convs[1](h)
    if has_bn2:
        h = bns[1](h)
    expected = head.classifier(torch.relu(h).flatten(1))
    assert torch.allclose(head(x), expected, atol=1e-6)
    # 1x1 conv C->128, BN(128), 2x2 conv 128->768, [BN(768)], linear 768->5
    expected_params = 6 * 128 + 256 + 128 * 768 * 4 + (1536 if has_bn2 else 0) + 768 * 5 + 5
    assert sum(p.numel() for p in head.parameters()) == expected_params


@pytest.mark.parametrize("size", [1, 3, 4, 5, 9, 11, 16])
def test_aux_heads_accept_other_sizes(size):
    for head in (AuxiliaryHeadCIFAR(4, 3), AuxiliaryHeadImageNet(4, 3)):
        assert head(torch.randn(2, 4, size, size)).shape == (2, 3)


def test_drop_path_identity_cases():
    x = torch.randn(4, 3, 2, 2)
    assert drop_path(x, 0.0, training=True) is x
    assert drop_path(x, 0.5, training=False) is x
    with pytest.raises(ConfigError):
        drop_path(x, 1.0, training=True)


def test_drop_path_zeros_whole_samples_and_rescales():
    torch.manual_seed(0)
    p = 0.25
    x = torch.rand(4000, 2, 3, 3) + 0.5
    out = drop_path(x, p, training=True)
    kept = (out != 0).flatten(1)
    assert (kept.all(1) | (~kept).all(1)).all()  # each sample entirely kept or entirely dropped
    keep = kept.all(1)
    assert torch.allclose(out[keep], x[keep] / (1 - p))
    assert abs((~keep).float().mean().item() - p) < 0.03  # ~4.4 standard deviations
    # Exactly the mask that bernoulli_(1 - p) draws from the same seed, one entry per sample.
    torch.manual_seed(1)
    out = drop_path(x, p, training=True)
    torch.manual_seed(1)
    mask = torch.empty(4000, 1, 1, 1).bernoulli_(1 - p)
    assert torch.equal(out, x / (1 - p) * mask)


def test_cell_never_drops_identities():
    torch.manual_seed(0)
    cell = Cell([("skip_connect", 0), ("skip_connect", 1)], [2], 3, 3, 4, False, False).train()
    s0, s1 = torch.randn(8, 3, 5, 5), torch.randn(8, 3, 5, 5)
    assert torch.equal(cell(s0, s1, 0.9), cell(s0, s1, 0.0))


def test_cell_drops_other_ops_per_sample_in_training_only():
    torch.manual_seed(0)
    cell = Cell([("avg_pool_3x3", 0), ("skip_connect", 1)], [2], 3, 3, 4, False, False).train()
    s0, s1 = torch.randn(16, 3, 5, 5), torch.randn(16, 3, 5, 5)
    a, b = cell.preprocess0(s0), cell.preprocess1(s1)
    pooled = cell.ops[0](a)
    out = cell(s0, s1, 0.5)
    dropped_part = out - b  # only the pooling branch may be dropped
    for k in range(16):
        assert (torch.allclose(dropped_part[k], torch.zeros_like(pooled[k]), atol=1e-6)
                or torch.allclose(dropped_part[k], pooled[k] / 0.5, atol=1e-5))
    zeros = sum(bool(dropped_part[k].abs().max() < 1e-6) for k in range(16))
    assert 0 < zeros < 16
    cell.eval()
    assert torch.equal(cell(s0, s1, 0.5), cell(s0, s1, 0.0))


def test_network_uses_drop_path_prob_in_training_only():
    torch.manual_seed(0)
    model = NetworkCIFAR(4, 3, 3, False, load_cell("darts_v2"))
    x = torch.randn(4, 3, 8, 8)
    model.eval()
    reference = model(x)[0]
    model.drop_path_prob = 0.5
    assert torch.equal(model(x)[0], reference)
    model.train()
    torch.manual_seed(1)
    first = model(x)[0]
    model.drop_path_prob = 0.0
    assert not torch.allclose(first, model(x)[0])


# ---------------------------------------------------------------------------------------------
# Multiply-adds and parameter counting on hand-checkable models
# ---------------------------------------------------------------------------------------------


def test_multiply_adds_hand_count():
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),       # 3 out ch x 5x5 positions x (2 in ch x 3x3) = 1350
        nn.Conv2d(3, 3, 3, padding=1, groups=3),  # depthwise: 3 x 5x5 x 9 = 675
        nn.BatchNorm2d(3),                   # not counted
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 4),             # 75 x 4 = 300
    )
    assert count_multiply_adds(model, (1, 2, 5, 5)) == 1350 + 675 + 300
    assert count_multiply_adds(model, (2, 2, 5, 5)) == 2 * (1350 + 675 + 300)


def test_multiply_adds_leave_modes_and_buffers_untouched():
    torch.manual_seed(0)
    model = NetworkCIFAR(4, 3, 3, True, load_cell("darts_v2"))
    model.train()
    model.cells[1].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    madds = count_multiply_adds(model, (1, 3, 8, 8))
    assert madds > 0
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    # The auxiliary head is not part of the count (eval mode): same as without one.
    torch.manual_seed(0)
    plain = NetworkCIFAR(4, 3, 3, False, load_cell("darts_v2"))
    assert count_multiply_adds(plain, (1, 3, 8, 8)) == madds


def test_count_parameters_hand_count():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Linear(4, 5))
    assert count_parameters(model) == 2 * 3 * 9 + 3 + 4 * 5 + 5
    head = AuxiliaryHeadCIFAR(4, 2)
    wrapped = nn.ModuleDict({"body": model, "aux": head})
    n_head = sum(p.numel() for p in head.parameters())
    assert count_auxiliary_parameters(wrapped) == n_head
    assert count_parameters(wrapped) == count_parameters(model)
    assert count_parameters(wrapped, exclude_auxiliary=False) == count_parameters(model) + n_head


# ---------------------------------------------------------------------------------------------
# Registry and validation
# ---------------------------------------------------------------------------------------------


def test_registry_and_build_network():
    assert NETWORKS.names() == ["cifar", "imagenet", "nas-bench-201", "proxyless"]
    assert isinstance(build_network("cifar", "DARTS_V2", 4, 3, 2), NetworkCIFAR)
    model = build_network("imagenet", load_cell("pdarts"), 4, 3, 2, auxiliary=True, in_channels=1)
    assert isinstance(model, NetworkImageNet) and model.auxiliary
    assert model.stem0[0].in_channels == 1
    with pytest.raises(ConfigError, match="cifar, imagenet"):
        build_network("mobile", "darts_v2", 4, 3, 2)


@pytest.mark.parametrize("kwargs", [dict(C=0), dict(layers=0), dict(num_classes=0),
                                    dict(in_channels=0), dict(C=2.5)])
@pytest.mark.parametrize("cls", [NetworkCIFAR, NetworkImageNet])
def test_bad_sizes_raise_config_error(cls, kwargs):
    args = dict(C=4, num_classes=3, layers=3, auxiliary=False, genotype=load_cell("darts_v2"))
    args.update(kwargs)
    with pytest.raises(ConfigError):
        cls(**args)


def test_genotype_must_be_a_genotype():
    with pytest.raises(ConfigError, match="Genotype"):
        NetworkCIFAR(4, 3, 3, False, {"normal": []})


def test_odd_channels_where_factorized_reduce_needs_even_ones():
    g = load_cell("darts_v2")
    with pytest.raises(ConfigError, match="even"):
        NetworkImageNet(5, 3, 3, False, g)
    with pytest.raises(ConfigError, match="even"):
        Cell(g.normal, g.normal_concat, 4, 4, 3, reduction=False, reduction_prev=True)
    # DARTS_V2's reduction cell has no stride-2 skip_connect; this one does.
    with pytest.raises(ConfigError, match="even"):
        Cell([("skip_connect", 0), ("max_pool_3x3", 1)], [2], 4, 4, 3, reduction=True,
             reduction_prev=False)
    # Odd C is fine for the CIFAR net: its reduction cells double the channels to an even number.
    model = NetworkCIFAR(5, 3, 3, False, g)
    assert model(torch.randn(2, 3, 8, 8))[0].shape == (2, 3)


def test_reduction_cell_cannot_concat_its_inputs():
    g = Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1)], normal_concat=[1, 2],
                 reduce=[("max_pool_3x3", 0), ("skip_connect", 1)], reduce_concat=[0, 2])
    with pytest.raises(ConfigError, match="reduction cell"):
        NetworkCIFAR(4, 3, 3, False, g)
    # Concatenating an input node in a normal cell is allowed.
    ok = Genotype(normal=g.normal, normal_concat=[1, 2], reduce=g.reduce, reduce_concat=[2])
    model = NetworkCIFAR(4, 3, 3, False, ok)
    assert model(torch.randn(2, 3, 8, 8))[0].shape == (2, 3)


@pytest.mark.needs_cuda
def test_runs_on_cuda():
    model = NetworkCIFAR(4, 3, 3, True, load_cell("darts_v2")).cuda()
    model.drop_path_prob = 0.3
    logits, logits_aux = model(torch.randn(2, 3, 8, 8, device="cuda"))
    assert logits.is_cuda and logits_aux.is_cuda
    assert count_multiply_adds(model, (1, 3, 8, 8)) > 0
