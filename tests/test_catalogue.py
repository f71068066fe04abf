"""The rule records: ids, order, fields, examples, and the generated docs."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import matcalc_jax as mj
from matcalc_jax import catalogue
from matcalc_jax.catalogue import draws
from matcalc_jax.forms import elementwise, softmax
from matcalc_jax.site.rules_page import render_rules_markdown

from .helpers import lowerings_during

SEED_IDS = [
    "product_inner",
    "product_bilinear",
    "product_scalar_vector",
    "chain_vector",
    "chain_matrix_trace",
    "chain_matrix_vector",
    "chain_scalar",
    "identity",
    "linear",
    "linear_transposed",
    "elementwise",
    "logistic_scalar",
    "logistic_vector",
]
APPENDIX_IDS = ["sum", "power", "exp", "log", "logistic_general", "softmax"]
RULES = mj.rules()
IDS = [r.id for r in RULES]


MATRIX_RULES = RULES[len(SEED_IDS) + len(APPENDIX_IDS) :]


def test_rules_lists_the_seed_first_in_seed_order_then_the_appendix_then_matrix_rules():
    assert IDS[: len(SEED_IDS) + len(APPENDIX_IDS)] == SEED_IDS + APPENDIX_IDS
    assert [r.source for r in RULES[: len(SEED_IDS)]] == ["seed"] * len(SEED_IDS)
    appendix = RULES[len(SEED_IDS) : len(SEED_IDS) + len(APPENDIX_IDS)]
    assert {r.source for r in appendix} == {"nndl"}
    assert len(MATRIX_RULES) >= 16
    assert not {r.source for r in MATRIX_RULES} & {"seed", "nndl"}


def test_the_order_within_the_rest_is_the_declaration_order_of_the_families():
    declared = [r.id for family in catalogue.FAMILIES for r in family.RULES]
    leading = set(SEED_IDS + APPENDIX_IDS)
    assert [r.id for r in MATRIX_RULES] == [i for i in declared if i not in leading]
    assert sorted(declared) == sorted(IDS)


@pytest.mark.parametrize("r", MATRIX_RULES, ids=[r.id for r in MATRIX_RULES])
def test_matrix_rules_name_their_reference(r):
    assert r.source.startswith(("matrix-cookbook", "Bishop", "standard"))
    if r.source.startswith("matrix-cookbook"):
        assert "eq." in r.source or "sec." in r.source


def test_hessians_are_given_for_the_scalar_objectives():
    with_hessian = {r.id for r in RULES if r.has_hessian}
    assert {"quadratic_form", "least_squares", "logistic_regression"} <= with_hessian
    for r in RULES:
        if r.has_hessian:
            args = r.example(jax.random.key(0))
            assert jax.eval_shape(r.fn, *args).shape == ()


def test_a_rule_without_a_hessian_says_which_rules_have_one():
    with pytest.raises(ValueError) as info:
        mj.rule("linear").hessian(*mj.rule("linear").example(jax.random.key(0)))
    message = str(info.value)
    assert "'linear' has no closed-form Hessian (hessian): its map is not scalar" in message
    assert "r.has_hessian" in message


def test_rule_returns_the_record_with_that_id():
    for r in RULES:
        assert mj.rule(r.id) is r


def test_unknown_rule_id_is_a_key_error_listing_the_known_ids():
    with pytest.raises(KeyError) as info:
        mj.rule("lienar")
    message = str(info.value)
    assert "'lienar'" in message
    assert all(rule_id in message for rule_id in IDS)


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_record_fields_are_filled(r):
    assert r.title and r.formula and r.numerator_formula and r.plain and r.shapes
    assert "\\" in r.formula or "=" in r.formula
    assert r.wrt >= 0
    name = r.public.removeprefix("matcalc_jax.")
    assert callable(getattr(mj, name)), f"{r.public} is not public"


def _declared(**fields):
    base = dict(id="t", title="t", formula="f", numerator_formula="f", plain="f", source="s",
                shapes="s", fn=softmax.softmax_map, make_example=None)  # fmt: skip
    return catalogue.record.Rule(**(base | fields))


def test_a_declaration_derives_the_structured_twin_and_the_public_name():
    """name_jacobian gives name_operator from its module and matcalc_jax.name_jacobian;
    what is given wins; a closed form with no twin is an error naming the rule."""
    derived = _declared(closed_form=softmax.softmax_jacobian)
    assert derived.structured_form is softmax.softmax_operator and derived.wrt == 0
    assert derived.public == "matcalc_jax.softmax_jacobian"
    twin = elementwise.log_operator
    given = _declared(closed_form=softmax.softmax_jacobian, structured_form=twin, public="mj.x")
    assert (given.structured_form, given.public) == (twin, "mj.x")
    with pytest.raises(ValueError, match=r"rule 't': structured_form not given.*'_lonely'"):
        _declared(closed_form=_lonely)


def test_every_rule_reads_its_text_from_its_table_and_every_table_names_a_rule():
    """The family files declare no text: each rule's fields are its table's in rules.toml,
    runs of white space read as one space; no table is left without a rule."""
    record = catalogue.record
    assert record.text_ids() == tuple(r.id for r in mj.rules())
    for r in mj.rules():
        text = record.rule_text(r.id)
        assert {f: getattr(r, f) for f in record.TEXT_FIELDS if f in text} == text
        assert all(value == " ".join(value.split()) and value for value in text.values())
    assert mj.rule("softmax").formula.startswith(r"\frac{\partial \operatorname{softmax}")


def test_a_declaration_without_text_or_a_bad_table_is_an_error_naming_the_rule(monkeypatch):
    record = catalogue.record
    tables = {
        "wrapped": dict(title="A\n  title", formula="f", numerator_formula="f", plain="p",
                        source="s", shapes="x"),
        "unknown": dict(title="t", formula="f", numerator_formula="f", plain="p",
                        source="s", shapes="x", note="misspelt"),
        "missing": dict(title="t", formula="f", plain="p", source="s", shapes="x"),
        "number": dict(title="t", formula="f", numerator_formula="f", plain="p",
                       source="s", shapes=3),
    }  # fmt: skip
    monkeypatch.setattr(record, "_text_tables", lambda: tables)
    declare = lambda rule_id: record.Rule(  # noqa: E731
        id=rule_id, fn=softmax.softmax_map, make_example=None,
        closed_form=softmax.softmax_jacobian,
    )  # fmt: skip
    wrapped = declare("wrapped")
    assert (wrapped.title, wrapped.shapes, wrapped.notes) == ("A title", "x", "")
    with pytest.raises(ValueError, match=r"rule 'absent': no title given and no \[absent\]"):
        declare("absent")
    with pytest.raises(ValueError, match=r"rule 'unknown':.*unknown fields \['note'\]"):
        declare("unknown")
    with pytest.raises(ValueError, match=r"rule 'missing':.*lacks \['numerator_formula'\]"):
        declare("missing")
    with pytest.raises(ValueError, match=r"rule 'number':.*non-string \['shapes'\]"):
        declare("number")


def _lonely(*args, layout="numerator"):
    return args


def _private_jacobian(x, layout="numerator", structured=False):
    return ("structured" if structured else "dense", x)


def _square_gradient(x):
    return 2 * x


def _square_hessian(x, structured=False):
    return ("structured" if structured else "dense", x)


def test_a_declaration_derives_the_forms_from_a_structured_keyword_or_a_gradient():
    """A closed form taking ``structured`` is its own twin, exported under the rule's id
    when its name is private; a gradient gives both forms and the public name; a Hessian
    taking ``structured`` gives the structured Hessian; a rule needs one of closed_form and
    gradient."""
    keyword = _declared(closed_form=_private_jacobian)
    assert keyword.structured_form(3) == ("structured", 3) and keyword.public == "matcalc_jax.t"
    x = jnp.arange(3.0)
    scalar = _declared(gradient=_square_gradient, hessian_form=_square_hessian)
    assert scalar.public == "matcalc_jax.t"  # the gradient's name is private
    np.testing.assert_array_equal(scalar.closed_form(x, layout="denominator"), 2 * x)
    np.testing.assert_array_equal(scalar.structured_form(x).to_dense(), 2 * x)
    assert scalar.structured_hessian_form(x) == ("structured", x)
    assert _declared(gradient=softmax.softmax_jacobian).public == "matcalc_jax.softmax_jacobian"
    given = _declared(closed_form=_private_jacobian, gradient=_square_gradient)
    assert given.closed_form is _private_jacobian  # what is given wins
    with pytest.raises(ValueError, match="rule 't': give closed_form or gradient"):
        _declared()


@pytest.mark.parametrize("r", RULES, ids=IDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_example_gives_valid_arguments_of_the_dtype(r, dtype):
    args = r.example(jax.random.key(1), dtype)
    assert 0 <= r.wrt < len(args)
    assert all(jnp.asarray(a).dtype == dtype for a in args)
    out = r.fn(*args)
    assert out.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("r", RULES, ids=IDS)
def test_example_size_sets_the_differentiated_argument(r):
    args = r.example(jax.random.key(2), jnp.float32, size=7)
    x = jnp.asarray(args[r.wrt])
    if x.ndim == 0 and len(args) > 1:  # scalar argument: size sets the intermediate vectors
        assert any(7 in jnp.shape(a) for a in args)
    elif x.ndim == 0:  # a lone scalar argument: nothing to size
        assert args[0].shape == ()
    else:
        assert x.shape[0] == 7


def test_example_refuses_bad_size_and_dtype():
    r = mj.rule("linear")
    with pytest.raises(ValueError, match="size=0"):
        r.example(jax.random.key(0), size=0)
    with pytest.raises(TypeError, match="floating"):
        r.example(jax.random.key(0), dtype=jnp.int32)


def test_example_refuses_float64_without_x64():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="64-bit mode"):
            mj.rule("exp").example(jax.random.key(0), dtype=jnp.float64)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_docs_rules_md_is_up_to_date():
    path = Path(__file__).resolve().parents[1] / "docs" / "rules.md"
    assert path.read_text(encoding="utf-8") == render_rules_markdown(), (
        "docs/rules.md is stale: run `matcalc-jax docs`"
    )


def test_docs_rules_md_names_every_rule_and_closed_form():
    text = render_rules_markdown()
    for r in RULES:
        assert f"`{r.id}`" in text
        assert r.public in text


def test_draws_of_any_shape_are_cut_from_one_generated_vector():
    key = jax.random.key(3)
    flat = draws.normal(key, (24,), jnp.float32)
    np.testing.assert_array_equal(draws.normal(key, (2, 3, 4), jnp.float32), flat.reshape(2, 3, 4))
    traced = jax.jit(lambda k: draws.normal(k, (4, 6), jnp.float32))(key)
    np.testing.assert_array_equal(traced, flat.reshape(4, 6))  # the same numbers under jit
    shapes = [(5, 7), (3,), (2, 9, 2), ()]
    count = lowerings_during(lambda: [draws.normal(key, s, jnp.float32) for s in shapes])
    assert count == 0  # the generator of that length is compiled already; cutting is free
    u = draws.uniform(key, (3, 3), jnp.float32, 0.5, 2.0)
    assert u.shape == (3, 3) and bool(jnp.all((u >= 0.5) & (u < 2.0)))
    long = draws.normal(key, (draws.SHORTEST_DRAW + 1,), jnp.float32)
    assert long.shape == (draws.SHORTEST_DRAW + 1,)
    assert abs(float(jnp.mean(long))) < 0.1 and abs(float(jnp.std(long)) - 1) < 0.1
