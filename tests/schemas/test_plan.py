import copy

import pytest
import yaml

from schemas.plan import PlanError
from schemas.plan_loading import PLANS_DIR, builtin_plan, parse_plan

HOP_C = "transactions.customer_id->customers.customer_id->transactions.customer_id"
HOP_T = "transactions.terminal_id->terminals.terminal_id->transactions.terminal_id"


@pytest.fixture()
def raw():
    return yaml.safe_load((PLANS_DIR / "fraud.yaml").read_text())


def test_fraud_plan_tensor_names_follow_the_seed_convention():
    plan = builtin_plan("fraud")
    names = plan.tensor_names
    assert names[0] == "anchor_time"
    assert "transactions.customer_id" in names and "transactions.tx_amount" in names
    assert f"{HOP_C}:tx_amount" in names and f"{HOP_T}:customer_id" in names
    # the label never becomes an input, and the join column is not repeated in its own window
    assert not any(n.endswith("tx_fraud") for n in names)
    assert f"{HOP_C}:customer_id" not in names
    spec = {t.name: t for t in plan.tensors}
    assert spec["anchor_time"].triton_dtype == "INT64"
    assert spec["transactions.tx_amount"].triton_dtype == "FP32"
    assert spec[f"{HOP_C}:tx_datetime"].dims == [-1, 1]
    assert plan.embedding_entity_types == ("customers", "terminals")


def test_round_trip_through_yaml_keeps_the_fingerprint():
    plan = builtin_plan("fraud")
    again = parse_plan(yaml.safe_load(plan.to_yaml()))
    assert again.fingerprint() == plan.fingerprint()
    assert again.tensor_names == plan.tensor_names


def test_time_bounds():
    plan = builtin_plan("fraud")
    day, hour = 86_400 * 10**9, 3_600 * 10**9
    t = 100 * day
    assert plan.rti_bounds(t) == (t - 7 * day, t)
    assert plan.embedding_snapshot_bounds(t) == (t - 14 * day, t - 12 * hour)


def _mutate(raw, path, value):
    raw = copy.deepcopy(raw)
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    "path,value,field",
    [
        (("tables", "transactions", "columns", "tx_amount"), "float16", "tables.transactions.columns.tx_amount"),
        (("distillation", "embedding_keys"), ["transactions.nope"], "distillation.embedding_keys[0]"),
        (("distillation", "embedding_keys"), ["customers.customer_id"], "distillation.embedding_keys[0]"),
        (("distillation", "real_time_interactions"), {HOP_C: 0}, "distillation.real_time_interactions"),
        (("distillation", "real_time_interactions"), {"transactions.customer_id->customers.customer_id": 4},
         "distillation.real_time_interactions"),
        (("distillation", "real_time_interactions"),
         {"transactions.customer_id->customers.nope->transactions.customer_id": 4},
         "distillation.real_time_interactions"),
        (("distillation", "real_time_interactions"),
         {"transactions.customer_id->unknown.customer_id->transactions.customer_id": 4},
         "distillation.real_time_interactions"),
        (("distillation", "min_embedding_offset"), {"value": 30, "unit": "days"}, "distillation.min_embedding_offset"),
        (("distillation", "real_time_offset"), {"value": 1, "unit": "fortnights"}, "distillation.real_time_offset.unit"),
        (("distillation", "bogus"), 1, "distillation.bogus"),
        (("fact_table",), "orders", "fact_table"),
        (("label",), "nope", "label"),
        (("tables", "transactions", "time_column"), "transaction_id", "tables.transactions.time_column"),
        (("distillation", "embedding_keys"), KeyError, "distillation.embedding_keys"),
    ],
)
def test_invalid_plans_name_the_field(raw, path, value, field):
    with pytest.raises(PlanError) as err:
        parse_plan(_mutate(raw, path, value))
    assert err.value.field.startswith(field), str(err.value)
    assert field in str(err.value)
