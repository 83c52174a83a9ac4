"""Tests for darts_nas.genotype: the Genotype value, its text forms, derive() and the cells library."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darts_nas.errors import GenotypeError
from darts_nas.genotype import (
    PRIMITIVES,
    Genotype,
    cells_dir,
    derive,
    derive_cell,
    list_cells,
    load_cell,
    parse,
    resolve,
)
from darts_nas.ops import OPS

# The published genotypes of REFERENCE.md section 5, copied as data: each JSON file in cells/
# must hold exactly these.
REFERENCE_LINES = {
    "darts_v1": """
DARTS_V1 normal: sep_conv_3x3 1, sep_conv_3x3 0 | skip_connect 0, sep_conv_3x3 1 | skip_connect 0, sep_conv_3x3 1 | sep_conv_3x3 0, skip_connect 2 ; concat 2-5
DARTS_V1 reduce: max_pool_3x3 0, max_pool_3x3 1 | skip_connect 2, max_pool_3x3 0 | max_pool_3x3 0, skip_connect 2 | skip_connect 2, avg_pool_3x3 0 ; concat 2-5
""",
    "darts_v2": """
DARTS_V2 normal: sep_conv_3x3 0, sep_conv_3x3 1 | sep_conv_3x3 0, sep_conv_3x3 1 | sep_conv_3x3 1, skip_connect 0 | skip_connect 0, dil_conv_3x3 2 ; concat 2-5
DARTS_V2 reduce: max_pool_3x3 0, max_pool_3x3 1 | skip_connect 2, max_pool_3x3 1 | max_pool_3x3 0, skip_connect 2 | skip_connect 2, max_pool_3x3 1 ; concat 2-5
""",
    "pc_darts_cifar": """
PC_DARTS_cifar normal: sep_conv_3x3 1, skip_connect 0 | sep_conv_3x3 0, dil_conv_3x3 1 | sep_conv_5x5 0, sep_conv_3x3 1 | avg_pool_3x3 0, dil_conv_3x3 1 ; concat 2-5
PC_DARTS_cifar reduce: sep_conv_5x5 1, max_pool_3x3 0 | sep_conv_5x5 1, sep_conv_5x5 2 | sep_conv_3x3 0, sep_conv_3x3 3 | sep_conv_3x3 1, sep_conv_3x3 2 ; concat 2-5
""",
    "pc_darts_image": """
PC_DARTS_image normal: skip_connect 1, sep_conv_3x3 0 | sep_conv_3x3 0, skip_connect 1 | sep_conv_3x3 1, sep_conv_3x3 3 | sep_conv_3x3 1, dil_conv_5x5 4 ; concat 2-5
PC_DARTS_image reduce: sep_conv_3x3 0, skip_connect 1 | dil_conv_5x5 2, max_pool_3x3 1 | sep_conv_3x3 2, sep_conv_3x3 1 | sep_conv_5x5 0, sep_conv_3x3 3 ; concat 2-5
""",
    "pdarts": """
PDARTS normal: skip_connect 0, dil_conv_3x3 1 | skip_connect 0, sep_conv_3x3 1 | sep_conv_3x3 1, sep_conv_3x3 3 | sep_conv_3x3 0, dil_conv_5x5 4 ; concat 2-5
PDARTS reduce: avg_pool_3x3 0, sep_conv_5x5 1 | sep_conv_3x3 0, dil_conv_5x5 2 | max_pool_3x3 0, dil_conv_3x3 1 | dil_conv_3x3 1, dil_conv_5x5 3 ; concat 2-5
""",
    "drnas_cifar10": """
DrNAS_cifar10 normal: sep_conv_3x3 0, sep_conv_5x5 1 | sep_conv_3x3 1, sep_conv_3x3 2 | skip_connect 0, sep_conv_3x3 1 | sep_conv_3x3 2, dil_conv_5x5 3 ; concat 2-5
DrNAS_cifar10 reduce: max_pool_3x3 0, sep_conv_5x5 1 | dil_conv_5x5 2, sep_conv_5x5 1 | sep_conv_5x5 1, dil_conv_5x5 3 | skip_connect 4, sep_conv_5x5 1 ; concat 2-5
""",
    # FairDARTS's sparse cells (the authors' genotypes.py; '-' is a node with no input)
    "fairdarts_a": """
FairDARTS_a normal: sep_conv_3x3 0, sep_conv_5x5 1 | - | max_pool_3x3 0 | sep_conv_3x3 0 ; concat 2-5
FairDARTS_a reduce: max_pool_3x3 0, avg_pool_3x3 1 | avg_pool_3x3 0, dil_conv_5x5 1 | avg_pool_3x3 0, sep_conv_5x5 1 | skip_connect 0, skip_connect 1 ; concat 2-5
""",
    "fairdarts_b": """
FairDARTS_b normal: sep_conv_3x3 0, sep_conv_3x3 1 | sep_conv_3x3 1 | dil_conv_3x3 0, sep_conv_5x5 1 | dil_conv_5x5 1 ; concat 2-5
FairDARTS_b reduce: skip_connect 0, dil_conv_3x3 1 | skip_connect 0, dil_conv_3x3 1 | max_pool_3x3 0, sep_conv_3x3 1 | skip_connect 2, max_pool_3x3 0 ; concat 2-5
""",
    "nasnet": """
NASNet normal: sep_conv_5x5 1, sep_conv_3x3 0 | sep_conv_5x5 0, sep_conv_3x3 0 | avg_pool_3x3 1, skip_connect 0 | avg_pool_3x3 0, avg_pool_3x3 0 | sep_conv_3x3 1, skip_connect 1 ; concat 2-6
NASNet reduce: sep_conv_5x5 1, sep_conv_7x7 0 | max_pool_3x3 1, sep_conv_7x7 0 | avg_pool_3x3 1, sep_conv_5x5 0 | skip_connect 3, avg_pool_3x3 2 | sep_conv_3x3 2, max_pool_3x3 1 ; concat 4,5,6
""",
    "amoebanet": """
AmoebaNet normal: avg_pool_3x3 0, max_pool_3x3 1 | sep_conv_3x3 0, sep_conv_5x5 2 | sep_conv_3x3 0, avg_pool_3x3 3 | sep_conv_3x3 1, skip_connect 1 | skip_connect 0, avg_pool_3x3 1 ; concat 4,5,6
AmoebaNet reduce: avg_pool_3x3 0, sep_conv_3x3 1 | max_pool_3x3 0, sep_conv_7x7 2 | sep_conv_7x7 0, avg_pool_3x3 1 | max_pool_3x3 0, max_pool_3x3 1 | conv_7x1_1x7 0, sep_conv_3x3 5 ; concat 3,4,6
""",
}
CELL_NAMES = sorted(REFERENCE_LINES)

# DARTS_V2 as the original code's genotypes.py writes it.
DARTS_V2_LEGACY = """Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),
('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2),
('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
reduce_concat=[2, 3, 4, 5])"""


def small_genotype(**changes) -> dict:
    """A valid one-node-per-cell genotype as keyword arguments, with ``changes`` applied."""
    kwargs = {
        "normal": [("sep_conv_3x3", 0), ("skip_connect", 1)],
        "normal_concat": [2],
        "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1)],
        "reduce_concat": [2],
    }
    kwargs.update(changes)
    return kwargs


def legacy_text(g: Genotype, *, use_range: bool, quote: str = "'", tuples: bool = False,
                order=("normal", "normal_concat", "reduce", "reduce_concat")) -> str:
    """The original DARTS repr of ``g``, built independently of Genotype.__str__."""
    opening, closing = ("(", ")") if tuples else ("[", "]")

    def cell(pairs, nodes=None):  # a sparse cell as FairDARTS writes it: (op, node, input)
        if nodes is not None:
            return opening + ", ".join(f"({quote}{op}{quote}, {n}, {j})" for (op, j), n in zip(pairs, nodes)) + closing
        return opening + ", ".join(f"({quote}{op}{quote}, {j})" for op, j in pairs) + closing

    def concat(nodes):
        if use_range and list(nodes) == list(range(nodes[0], nodes[-1] + 1)):
            return f"range({nodes[0]}, {nodes[-1] + 1})"
        return opening + ", ".join(map(str, nodes)) + ("," if tuples and len(nodes) == 1 else "") + closing

    parts = {
        "normal": cell(g.normal, g.normal_nodes), "normal_concat": concat(g.normal_concat),
        "reduce": cell(g.reduce, g.reduce_nodes), "reduce_concat": concat(g.reduce_concat),
    }
    return "Genotype(" + ",\n    ".join(f"{key}={parts[key]}" for key in order) + ")"


# ---------------------------------------------------------------------------------------------
# The cells library
# ---------------------------------------------------------------------------------------------


def test_primitives_order():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                          "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert all(name in OPS for name in PRIMITIVES)


def test_list_cells_names_every_published_genotype():
    assert list_cells() == CELL_NAMES
    assert (cells_dir() / "__init__.py").is_file()


@pytest.mark.parametrize("name", CELL_NAMES)
def test_cell_files_match_reference(name):
    data = json.loads((cells_dir() / f"{name}.json").read_text())
    assert data["name"].lower() == name
    assert data["source"].count(",") >= 2 and any(str(y) in data["source"] for y in range(2017, 2022))
    assert Genotype.from_dict(data) == parse(REFERENCE_LINES[name])
    assert load_cell(name.upper()) == load_cell(name)


def test_darts_notes_name_the_order():
    assert "second" in json.loads((cells_dir() / "darts_v2.json").read_text())["note"]
    assert "first" in json.loads((cells_dir() / "darts_v1.json").read_text())["note"]


def test_five_node_cells_and_custom_concat():
    nasnet, amoeba = load_cell("nasnet"), load_cell("amoebanet")
    assert (nasnet.normal_steps, nasnet.reduce_steps) == (5, 5)
    assert nasnet.normal_concat == (2, 3, 4, 5, 6) and nasnet.reduce_concat == (4, 5, 6)
    assert amoeba.normal_concat == (4, 5, 6) and amoeba.reduce_concat == (3, 4, 6)
    darts = load_cell("darts_v2")
    assert (darts.normal_steps, darts.reduce_steps) == (4, 4)
    assert darts.normal[7] == ("dil_conv_3x3", 2)


def test_load_cell_unknown_name_lists_valid_ones():
    with pytest.raises(GenotypeError) as info:
        load_cell("darts_v3")
    assert "darts_v3" in str(info.value) and "darts_v2" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CELL_NAMES)
def test_round_trips(name, tmp_path):
    g = load_cell(name)
    assert Genotype.from_dict(g.to_dict()) == g
    assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert Genotype.from_json(g.to_json()) == g
    assert parse(g.to_json()) == g
    assert parse(str(g)) == g
    assert parse(repr(g)) == g  # the dataclass repr (tuples) is valid legacy text too
    assert parse(g.to_compact()) == g
    path = g.save(tmp_path / "genotype.json", extra={"source": "test"})
    assert Genotype.load(path) == g
    assert json.loads(path.read_text())["source"] == "test"
    assert resolve(str(path)) == g and resolve(str(tmp_path)) == g


@pytest.mark.parametrize("name", CELL_NAMES)
def test_legacy_text_parses_to_json_value(name):
    g = load_cell(name)
    variants = [
        legacy_text(g, use_range=True),
        legacy_text(g, use_range=False),
        legacy_text(g, use_range=True, quote='"', tuples=True),
        legacy_text(g, use_range=False, order=("reduce_concat", "reduce", "normal_concat", "normal")),
        "\n\n  " + legacy_text(g, use_range=True) + "  \n",
    ]
    for text in variants:
        assert parse(text) == g, text


def test_original_darts_v2_text():
    text = DARTS_V2_LEGACY.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6)")
    assert parse(DARTS_V2_LEGACY) == parse(text) == load_cell("darts_v2")
    assert parse(text.replace("range(2, 6)", "range(2,6)")) == load_cell("darts_v2")
    with pytest.raises(GenotypeError):
        parse(DARTS_V2_LEGACY + ",")


def test_range_forms():
    base = small_genotype()
    g = Genotype(**base)
    assert parse(str(g).replace("normal_concat=[2]", "normal_concat=range(2, 3)")) == g
    assert parse(str(g).replace("normal_concat=[2]", "normal_concat=range(3)")).normal_concat == (0, 1, 2)
    assert parse(str(g).replace("normal_concat=[2]", "normal_concat=(2,)")) == g
    with pytest.raises(GenotypeError):  # as in Python, (2) is the int 2, not a tuple
        parse(str(g).replace("normal_concat=[2]", "normal_concat=(2)"))
    with pytest.raises(GenotypeError):
        Genotype(**small_genotype(normal_concat=2))


def test_canonical_str_format():
    g = load_cell("darts_v1")
    text = str(g)
    assert text.startswith("Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ")
    assert "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), " in text
    assert text.endswith("reduce_concat=[2, 3, 4, 5])")


def test_compact_form_variants():
    g = load_cell("darts_v2")
    normal, reduce = REFERENCE_LINES["darts_v2"].strip().split("\n")
    unlabeled = [line.split(" ", 1)[1] for line in (normal, reduce)]
    assert parse(" / ".join(unlabeled)) == g
    assert parse("\n".join(reversed(unlabeled))) == g  # either cell first
    assert parse(" / ".join(u.replace("concat 2-5", "concat 2,3,4,5") for u in unlabeled)) == g
    assert parse(" / ".join(u.replace(" ; concat 2-5", "") for u in unlabeled)) == g  # default concat


def test_value_semantics_and_lists():
    a = Genotype(**small_genotype())
    b = Genotype(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) for k, v in small_genotype().items()})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert isinstance(a.normal, tuple) and isinstance(a.normal[0], tuple) and isinstance(a.normal_concat, tuple)
    with pytest.raises(AttributeError):
        a.normal = ()  # frozen
    assert a != Genotype(**small_genotype(reduce_concat=[0, 2]))


def test_normal_and_reduce_may_differ_in_size():
    g = Genotype(**small_genotype(reduce=[("max_pool_3x3", 0)] * 2 + [("skip_connect", 2)] * 2 + [("avg_pool_3x3", 3)] * 2,
                                  reduce_concat=[4, 2]))
    assert (g.normal_steps, g.reduce_steps) == (1, 3)
    assert parse(str(g)) == g and g.reduce_concat == (4, 2)


def test_int_coercion():
    np = pytest.importorskip("numpy")
    g = Genotype(**small_genotype(normal=[("sep_conv_3x3", np.int64(0)), ("skip_connect", 1)],
                                  normal_concat=range(2, 3)))
    assert g == Genotype(**small_genotype()) and type(g.normal[0][1]) is int
    for bad in (True, 1.0, "1", None, np.float64(1.0)):
        with pytest.raises(GenotypeError):
            Genotype(**small_genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", bad)]))
        with pytest.raises(GenotypeError):
            Genotype(**small_genotype(normal_concat=[bad]))


def test_save_is_atomic_and_merges_extra(tmp_path):
    g = load_cell("pdarts")
    path = tmp_path / "g.json"
    path.write_text("old")
    g.save(path, extra={"name": "mine", "epoch": 50})
    data = json.loads(path.read_text())
    assert data["name"] == "mine" and data["epoch"] == 50 and Genotype.from_dict(data) == g
    assert sorted(os.listdir(tmp_path)) == ["g.json"]  # no temporary file left behind
    with pytest.raises(GenotypeError):
        g.save(path, extra={"normal": []})
    with pytest.raises(GenotypeError) as info:
        g.save(tmp_path / "missing_dir" / "g.json")
    assert "missing_dir" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"normal": [("sep_conv_9x9", 0), ("skip_connect", 1)]}, "sep_conv_9x9"),
        ({"normal": [("none", 0), ("skip_connect", 1)]}, "'none'"),
        ({"normal": [("sep_conv_3x3", 2), ("skip_connect", 1)]}, "normal[0]"),
        ({"reduce": [("max_pool_3x3", 0), ("max_pool_3x3", -1)]}, "reduce[1]"),
        ({"normal": [("sep_conv_3x3", 0), ("skip_connect", 1), ("skip_connect", 0)]}, "odd"),
        ({"normal_concat": []}, "empty"),
        ({"normal_concat": [2, 3]}, "normal_concat"),
        ({"reduce_concat": [-1]}, "reduce_concat"),
        ({"reduce_concat": [2, 2]}, "twice"),
        ({"normal": "sep_conv_3x3 0"}, "normal"),
        ({"normal": [("sep_conv_3x3", 0, 1), ("skip_connect", 1)]}, "normal[0]"),
        ({"normal": [(0, "sep_conv_3x3"), ("skip_connect", 1)]}, "normal[0]"),
        ({"normal_concat": "2"}, "normal_concat"),
    ],
)
def test_invalid_genotypes(changes, fragment):
    with pytest.raises(GenotypeError) as info:
        Genotype(**small_genotype(**changes))
    assert fragment in str(info.value)
    with pytest.raises(GenotypeError):  # the same through JSON
        Genotype.from_json(json.dumps({k: list(v) if not isinstance(v, str) else v
                                       for k, v in small_genotype(**changes).items()}))


def test_unknown_op_message_lists_valid_ops():
    with pytest.raises(GenotypeError) as info:
        Genotype(**small_genotype(normal=[("sep_conv_9x9", 0), ("skip_connect", 1)]))
    message = str(info.value)
    assert all(name in message for name in PRIMITIVES[1:])


def test_node_index_bound_is_per_node():
    # Pair 2 feeds node 3, so it may read node 2 but not node 3.
    pairs = [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 2), ("skip_connect", 0)]
    assert Genotype(**small_genotype(normal=pairs, normal_concat=[2, 3])).normal_steps == 2
    with pytest.raises(GenotypeError) as info:
        Genotype(**small_genotype(normal=pairs[:2] + [("skip_connect", 3), ("skip_connect", 0)]))
    # named as the diagrams name it: index 3 is intermediate node 1, inputs are c_{k-2} and c_{k-1}
    message = str(info.value)
    assert "intermediate node 1 (index 3)" in message and "0 is c_{k-2}" in message, message


@pytest.mark.parametrize("name", ["DARTS-V2", "darts_v2", "DARTS_V2", " Darts-v2 "])
def test_cell_names_match_loosely(name):
    assert resolve(name) == load_cell("darts_v2") == load_cell(name)


@pytest.mark.parametrize("key", ["normal", "normal_concat", "reduce", "reduce_concat"])
def test_missing_key_is_named(key):
    data = Genotype(**small_genotype()).to_dict()
    del data[key]
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(data)
    assert repr(key) in str(info.value)


def test_from_dict_ignores_extra_keys_and_rejects_non_dicts():
    data = Genotype(**small_genotype()).to_dict()
    assert Genotype.from_dict({**data, "source": "x", "epoch": 3}) == Genotype(**small_genotype())
    for bad in ([], "normal", None, 3):
        with pytest.raises(GenotypeError):
            Genotype.from_dict(bad)


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(GenotypeError, match="nope.json"):
        Genotype.load(missing)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(GenotypeError, match="garbage.json"):
        Genotype.load(garbage)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"normal": [["sep_conv_3x3", 0]]}))
    with pytest.raises(GenotypeError, match="schema.json"):
        Genotype.load(schema)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GenotypeError, match="binary.json"):
        Genotype.load(binary)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Genotype",
        "Genotype(",
        "Genotype()",
        "genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[])",
        "genotypes.DARTS_V2",
        "DARTS_V2",
        DARTS_V2_LEGACY[:-1],  # unbalanced
        DARTS_V2_LEGACY + " junk",
        DARTS_V2_LEGACY.replace("[2, 3, 4, 5]", "list(range(2, 6))", 1),
        DARTS_V2_LEGACY.replace("[2, 3, 4, 5]", "range(2, 3 + 3)", 1),
        DARTS_V2_LEGACY.replace("[2, 3, 4, 5]", "x.y", 1),
        DARTS_V2_LEGACY.replace("[2, 3, 4, 5]", "range(2, 6, 0)", 1),
        DARTS_V2_LEGACY.replace("[2, 3, 4, 5]", "range(0, 999999999999)", 1),
        DARTS_V2_LEGACY.replace("[2, 3, 4, 5]", "[2, 3, 4, 5" + "0" * 5000 + "]", 1),
        DARTS_V2_LEGACY.replace("normal_concat", "extra", 1),
        DARTS_V2_LEGACY.replace("reduce_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 4, 5]"),
        DARTS_V2_LEGACY.replace("'sep_conv_3x3'", "'sep_conv_3x3", 1),
        DARTS_V2_LEGACY.replace("'sep_conv_3x3'", "sep_conv_3x3", 1),
        DARTS_V2_LEGACY.replace("'sep_conv_3x3'", "'sep\\nconv'", 1),
        "Genotype(normal=" + "[" * 500 + "]" * 500 + ")",
        "normal: sep_conv_3x3 0, sep_conv_3x3 1 ; concat 2-5",  # one cell only
        "normal: sep_conv_3x3 0, sep_conv_3x3 1 reduce: max_pool_3x3 0, max_pool_3x3 1",
        "normal: sep_conv_3x3 0, sep_conv_3x3 1 ; concat 3-2 / reduce: max_pool_3x3 0, max_pool_3x3 1",
        "normal: sep_conv_3x3 0, sep_conv_3x3 -1 / reduce: max_pool_3x3 0, max_pool_3x3 1",
        "normal: a 0, b 1 / normal: a 0, b 1",
        "[1, 2, 3]",
        "{}",
        "{\"normal\": 1",
    ],
)
def test_parse_rejects(text):
    with pytest.raises(GenotypeError):
        parse(text)


def test_parse_error_names_position_and_token():
    with pytest.raises(GenotypeError) as info:
        parse("Genotype(normal=__import__('os'))")
    assert "__import__" in str(info.value) and "column 17" in str(info.value)
    with pytest.raises(GenotypeError) as info:
        parse("Genotype(normal=[('a', 0)] + [])")
    assert "'+'" in str(info.value) and "line 1" in str(info.value)


def test_injection_has_no_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"Genotype(normal=__import__('os').system('touch {marker}'), normal_concat=[2], reduce=[], reduce_concat=[2])",
        f"Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=exec(\"open('{marker}', 'w')\"), reduce=[], reduce_concat=[])",
        f"Genotype(normal=[(__import__('os').system('touch {marker}'), 0)], normal_concat=[2], reduce=[], reduce_concat=[2])",
        f"__import__('os').system('touch {marker}')",
        f"normal: __import__('os').system('touch {marker}')",
    ]
    for text in payloads:
        with pytest.raises(GenotypeError):
            parse(text)
        with pytest.raises(GenotypeError):
            resolve(text)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# resolve
# ---------------------------------------------------------------------------------------------


def test_resolve(tmp_path):
    g = load_cell("darts_v2")
    assert resolve("darts_v2") == resolve("DARTS_V2") == g
    assert resolve(DARTS_V2_LEGACY) == g
    assert resolve(REFERENCE_LINES["darts_v2"]) == g
    legacy_file = tmp_path / "genotype.txt"
    legacy_file.write_text(DARTS_V2_LEGACY + "\n")
    assert resolve(str(legacy_file)) == g and resolve(legacy_file) == g
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(GenotypeError, match="genotype.json"):
        resolve(str(run_dir))
    g.save(run_dir / "genotype.json")
    assert resolve(str(run_dir)) == g
    with pytest.raises(GenotypeError) as info:
        resolve("darts_v9")
    assert "darts_v2" in str(info.value) and "amoebanet" in str(info.value)
    bad_file = tmp_path / "bad.txt"
    bad_file.write_text("Genotype(normal=oops)")
    with pytest.raises(GenotypeError, match="bad.txt"):
        resolve(str(bad_file))
    with pytest.raises(GenotypeError):
        resolve("normal" * 1000)  # too long for a file name; must not raise OSError


# ---------------------------------------------------------------------------------------------
# derive
# ---------------------------------------------------------------------------------------------

NONE, MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(8)


def edges(steps: int = 4) -> torch.Tensor:
    """All-zero logits for a cell with ``steps`` nodes: (num_edges, 8)."""
    return torch.zeros(sum(2 + i for i in range(steps)), len(PRIMITIVES))


def edge_index(node: int, j: int) -> int:
    """Row of the edge from node j into intermediate node ``node`` (2-based)."""
    return sum(2 + i for i in range(node - 2)) + j


def test_derive_hand_worked_example():
    a = edges()
    # node 2: edge 1 (sep_conv_5x5, logit 3) beats edge 0 (skip_connect, logit 2) -> edge 1 first.
    a[edge_index(2, 0), SKIP] = 2.0
    a[edge_index(2, 1), SEP5] = 3.0
    # node 3: edges 2 and 0 strong, edge 1 weak -> (dil_conv_3x3, 2), (max_pool_3x3, 0).
    a[edge_index(3, 2), DIL3] = 4.0
    a[edge_index(3, 0), MAX] = 1.0
    # node 4: only edge 3 stands out; the rest are uniform ties -> edge 3, then edge 0 (lowest index),
    # and a uniform edge takes the first non-none primitive, max_pool_3x3.
    a[edge_index(4, 3), SEP3] = 1.0
    # node 5: edges 4 and 1.
    a[edge_index(5, 4), AVG] = 2.0
    a[edge_index(5, 1), DIL5] = 1.5
    g = derive(a, a.clone())
    expected = [("sep_conv_5x5", 1), ("skip_connect", 0),
                ("dil_conv_3x3", 2), ("max_pool_3x3", 0),
                ("sep_conv_3x3", 3), ("max_pool_3x3", 0),
                ("avg_pool_3x3", 4), ("dil_conv_5x5", 1)]
    assert list(g.normal) == expected and list(g.reduce) == expected
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)


def test_derive_none_quirk():
    a = edges(steps=1)
    # Edge 0: 'none' dominates (logit 5), its best real op is sep_conv_3x3 (logit 1), so its best
    # non-none weight is e / (e^5 + e + 6) ~ 0.017. Edge 1: max_pool_3x3 at logit 0.5 has weight
    # e^0.5 / (e^0.5 + 7) ~ 0.19. Ranked by non-none weight, edge 1 comes first, and edge 0 still
    # gets its best non-none op.
    a[0, NONE], a[0, SEP3] = 5.0, 1.0
    a[1, MAX] = 0.5
    assert derive_cell(a)[0] == (("max_pool_3x3", 1), ("sep_conv_3x3", 0))

    b = edges(steps=2)
    # Node 3 has edges from 0, 1, 2.
    #   edge 0: none 10, sep_conv_3x3 9 -> sep weight e^9/(e^10+e^9+6) ~ 0.27 (0.73 counting none,
    #           0.999 after renormalising without none)
    #   edge 1: skip_connect 2          -> e^2/(e^2+7) ~ 0.51 (0.55 renormalised)
    #   edge 2: dil_conv_3x3 1.5        -> e^1.5/(e^1.5+7) ~ 0.39 (0.43 renormalised)
    # DARTS keeps edges 1 and 2; counting none, or renormalising, would keep edge 0.
    row = edge_index(3, 0)  # rows 0-1 are node 2, rows 2-4 node 3
    b[row + 0, NONE], b[row + 0, SEP3] = 10.0, 9.0
    b[row + 1, SKIP] = 2.0
    b[row + 2, DIL3] = 1.5
    pairs, steps = derive_cell(b)
    assert steps == 2
    assert pairs[2:] == (("skip_connect", 1), ("dil_conv_3x3", 2))
    # The hand arithmetic behind the comment above.
    assert math.exp(9) / (math.exp(10) + math.exp(9) + 6) < math.exp(1.5) / (math.exp(1.5) + 7)
    assert math.exp(9) / (math.exp(9) + 6) > math.exp(2) / (math.exp(2) + 6)


def test_derive_ties():
    # Everything equal: every node keeps edges 0 and 1 and the first non-none op.
    g = derive(edges(), edges())
    assert all(pair == ("max_pool_3x3", k % 2) for k, pair in enumerate(g.normal))
    a = edges()
    # node 3: edges 1 and 2 identical and stronger than edge 0 -> lower index first.
    a[edge_index(3, 1), SEP3] = a[edge_index(3, 2), SEP3] = 2.0
    # node 4: an op tie on edge 2 between sep_conv_3x3 and dil_conv_3x3 -> sep_conv_3x3.
    a[edge_index(4, 2), SEP3] = a[edge_index(4, 2), DIL3] = 3.0
    pairs, _ = derive_cell(a)
    assert pairs[2:4] == (("sep_conv_3x3", 1), ("sep_conv_3x3", 2))
    assert pairs[4:6] == (("sep_conv_3x3", 2), ("max_pool_3x3", 0))


def test_derive_five_nodes_and_multiplier():
    torch.manual_seed(0)
    a5, a4 = torch.randn(20, 8), torch.randn(14, 8)
    g = derive(a5, a4)
    assert (g.normal_steps, g.reduce_steps) == (5, 4)
    assert g.normal_concat == (2, 3, 4, 5, 6) and g.reduce_concat == (2, 3, 4, 5)
    assert all(j < 2 + k // 2 and op != "none" for k, (op, j) in enumerate(g.normal))
    assert derive(a5, a5, multiplier=3).normal_concat == (4, 5, 6)
    with pytest.raises(GenotypeError):
        derive(a5, a4, multiplier=5)
    with pytest.raises(GenotypeError):
        derive(a5, a4, multiplier=0)


def test_derive_matches_a_reference_implementation():
    # An independent restatement of the rule on random logits, to catch ordering slips.
    torch.manual_seed(1)
    for _ in range(20):
        a = torch.randn(14, 8) * 3
        w = torch.softmax(a, dim=-1)
        expected, start = [], 0
        for i in range(4):
            rows = list(range(start, start + 2 + i))
            best = sorted(rows, key=lambda r: (-w[r, 1:].max().item(), r))[:2]
            expected += [(PRIMITIVES[1 + int(w[r, 1:].argmax())], r - start) for r in best]
            start += 2 + i
        assert list(derive_cell(a)[0]) == expected


def test_derive_is_shift_invariant_per_row():
    torch.manual_seed(2)
    a = torch.randn(14, 8) * 2
    g = derive(a, a)
    shifted = a.clone()
    shifted[3] += 5.0
    shifted[10] -= 2.5
    assert derive(shifted, a) == g
    assert derive(a.double(), a.numpy()) == g
    assert derive(a.tolist(), torch.nn.Parameter(a)) == g


def test_derive_without_none_is_plain_argmax():
    prims = ("sep_conv_3x3", "skip_connect")
    a = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.5], [0.0, 0.2], [3.0, 0.0]])
    # node 2: edge 1 (sep 2.0) > edge 0 (skip 1.0); node 3: edge 2 (sep 3.0) > edge 0 (skip 0.5)
    g = derive(a, a, primitives=prims)
    assert g.normal == (("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 2), ("skip_connect", 0))
    assert g.normal_concat == (2, 3)


@pytest.mark.parametrize(
    "alphas, primitives",
    [
        (torch.zeros(13, 8), PRIMITIVES),
        (torch.zeros(0, 8), PRIMITIVES),
        (torch.zeros(14, 7), PRIMITIVES),
        (torch.zeros(14), PRIMITIVES),
        (torch.zeros(2, 14, 8), PRIMITIVES),
        (torch.full((14, 8), float("nan")), PRIMITIVES),
        ([[1, 2], [3]], PRIMITIVES),
        ("alphas", PRIMITIVES),
        (torch.zeros(14, 1), ("none",)),
        (torch.zeros(14, 2), ("none", "none")),
        (torch.zeros(14, 8), "none"),
    ],
)
def test_derive_rejects(alphas, primitives):
    with pytest.raises(GenotypeError):
        derive(alphas, torch.zeros(14, len(primitives) if not isinstance(primitives, str) else 8),
               primitives=primitives)


# ---------------------------------------------------------------------------------------------
# Property and fuzz tests
# ---------------------------------------------------------------------------------------------

VALID_OPS = [name for name in OPS.names() if name != "none"]


@st.composite
def cells(draw):
    steps = draw(st.integers(1, 6))
    pairs = [(draw(st.sampled_from(VALID_OPS)), draw(st.integers(0, 1 + k // 2))) for k in range(2 * steps)]
    concat = draw(st.lists(st.integers(0, 1 + steps), min_size=1, max_size=2 + steps, unique=True))
    return pairs, concat


@st.composite
def genotypes(draw):
    (normal, normal_concat), (reduce, reduce_concat) = draw(cells()), draw(cells())
    return Genotype(normal=normal, normal_concat=normal_concat, reduce=reduce, reduce_concat=reduce_concat)


@settings(max_examples=100, deadline=None)
@given(genotypes())
def test_random_genotypes_round_trip(g):
    assert parse(str(g)) == g
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert parse(g.to_compact()) == g
    assert parse(legacy_text(g, use_range=True, quote='"', tuples=True)) == g


FRAGMENTS = ["Genotype", "(", ")", "[", "]", "normal", "reduce", "normal_concat", "reduce_concat", "=",
             ",", "'sep_conv_3x3'", '"skip_connect"', "'none'", "0", "1", "5", "-1", "range", "range(2, 6)",
             ":", "|", ";", "/", "-", "concat", "\n", " ", "sep_conv_3x3", "{", "}", "'", "__import__", ".",
             "99999999999999999999999", "#"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)))
def test_parse_fuzz_raises_only_genotype_error(text):
    try:
        g = parse(text)
    except GenotypeError:
        return
    assert parse(str(g)) == g


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(genotypes(), st.data())
def test_parse_fuzz_mutated_valid_text(g, data):
    form = data.draw(st.sampled_from([str(g), g.to_compact(), g.to_json(), legacy_text(g, use_range=True)]))
    start = data.draw(st.integers(0, len(form)))
    end = data.draw(st.integers(start, min(len(form), start + 5)))
    text = form[:start] + data.draw(st.sampled_from(FRAGMENTS + ["", "x"])) + form[end:]
    try:
        parse(text)
    except GenotypeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_from_json_fuzz(text):
    try:
        Genotype.from_json(text)
    except GenotypeError:
        pass


json_leaf = (st.none() | st.booleans() | st.integers(-3, 10) | st.floats() | st.text(max_size=5)
             | st.sampled_from(VALID_OPS + ["none"]))
json_like = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["normal", "x"]), children, max_size=3),
    max_leaves=8,
)
cell_like = st.lists(st.tuples(st.sampled_from(VALID_OPS) | json_leaf, st.integers(-1, 4) | json_leaf), max_size=6) | json_leaf
concat_like = st.lists(st.integers(-1, 7) | json_leaf, max_size=5) | json_leaf


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    json_like,
    st.fixed_dictionaries({"normal": cell_like, "normal_concat": concat_like,
                           "reduce": cell_like, "reduce_concat": concat_like}),
))
def test_from_dict_fuzz(obj):
    try:
        g = Genotype.from_dict(obj)
    except GenotypeError:
        return
    assert Genotype.from_dict(g.to_dict()) == g


def test_huge_genotypes_are_refused_at_once():
    # 20k nodes used to be accepted after seconds of quadratic checking: bounded now.
    n = 20_000
    pairs = [("sep_conv_3x3", 0)] * (2 * n)
    with pytest.raises(GenotypeError, match="20000 intermediate nodes, more than the 100"):
        Genotype(normal=pairs, normal_concat=list(range(2, n + 2)), reduce=pairs[:2], reduce_concat=[2])
    with pytest.raises(GenotypeError, match="normal_concat has 10000 entries but the cell only has nodes 0..3"):
        Genotype(normal=pairs[:4], normal_concat=list(range(2, 10_002)), reduce=pairs[:2], reduce_concat=[2])
    with pytest.raises(GenotypeError, match="too long to be a cell"):
        parse("Genotype(normal=[" + "('sep_conv_3x3', 0), " * 60_000 + "])")
    edges = [("sep_conv_3x3", 0)] * 200  # 100 nodes: still a genotype
    assert len(Genotype(normal=edges, normal_concat=list(range(2, 102)), reduce=edges[:2],
                        reduce_concat=[2]).normal) == 200
