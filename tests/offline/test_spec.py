"""The project spec: every bad spec gets an error that names the field (docs/byod.md lists them)."""
import copy

import pytest
import yaml

from offline.data.sources import load_tables
from offline.data.spec import (EntityAggregateTask, FactLabelTask, NextItemTask, SpecError, load_project,
                               parse_project)
from offline.datasets.synthetic_bank import TINY_BANK, BANK_PLAN, bank_project_spec, write_bank_project


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bank")
    write_bank_project(d, TINY_BANK)
    return d


def spec(**changes):
    raw = bank_project_spec(plan=copy.deepcopy(BANK_PLAN))
    raw.update(changes)
    return raw


def error_of(raw, root=".") -> SpecError:
    with pytest.raises(SpecError) as exc:
        parse_project(raw, root)
    return exc.value


def test_valid_spec_parses_tasks_plan_and_embedding_entities(bank_dir):
    project = load_project(bank_dir / "project.yaml")
    kinds = [type(t) for t in project.tasks]
    assert kinds == [EntityAggregateTask, FactLabelTask]
    assert project.tasks[0].horizon.ns == 7 * 86_400 * 10**9
    assert project.plan.fact_table == "card_payments"
    assert project.embedding_entity_types == ("accounts", "merchants")
    assert project.feature_columns("card_payments") == ["amount", "channel"]  # keys, time, label excluded
    assert project.spec.tables["card_payments"].label_delay_ns("is_fraud") == 7 * 86_400 * 10**9
    ds = load_tables(project)
    assert len(ds.table("card_payments")) > 0 and ds.table("card_payments")["payment_time"].dtype == "int64"


def test_next_item_task_parses():
    raw = spec()
    raw["base_tasks"] = [{"name": "next_merchants", "kind": "next_item", "entity": "accounts",
                          "facts": "card_payments", "item": "merchant_id", "horizon": {"value": 2, "unit": "days"}}]
    task = parse_project(raw).tasks[0]
    assert isinstance(task, NextItemTask) and task.horizon.ns == 2 * 86_400 * 10**9


def test_unknown_column_in_the_files(bank_dir):
    raw = yaml.safe_load((bank_dir / "project.yaml").read_text())
    raw["tables"]["card_payments"]["columns"]["amout"] = "numeric"
    project = parse_project(raw, bank_dir)
    with pytest.raises(SpecError, match=r"^tables\.card_payments\.columns\.amout: unknown column 'amout': not in"):
        load_tables(project)


def test_unknown_column_in_the_spec():
    raw = spec()
    raw["tables"]["card_payments"]["time_column"] = "paid_at"
    assert str(error_of(raw)).startswith("tables.card_payments.time_column: unknown column 'paid_at'")


def test_foreign_key_to_unknown_table():
    raw = spec()
    raw["links"].append({"table": "card_payments", "column": "device_id", "references": "phones"})
    err = error_of(raw)
    assert err.field == "links[6].references" and "unknown table 'phones'" in str(err)


def test_fact_table_without_time_column():
    raw = spec()
    del raw["tables"]["logins"]["time_column"]
    err = error_of(raw)
    assert err.field == "tables.logins.time_column" and "fact table" in str(err)


def test_label_column_used_as_a_feature():
    raw = spec()
    raw["tables"]["card_payments"]["features"] = ["amount", "is_fraud"]
    err = error_of(raw)
    assert err.field == "tables.card_payments.features[1]" and "label column" in str(err)


def test_label_column_in_a_real_time_window():
    raw = spec()
    hop = "card_payments.account_id->accounts.account_id->card_payments.account_id"
    raw["serving"]["plan"]["distillation"]["real_time_columns"] = {hop: ["amount", "is_fraud"]}
    err = error_of(raw)  # the plan's own label: refused by schemas.plan_loading, field named
    assert err.field == f"serving.plan.distillation.real_time_columns.{hop}[1]" and "never" in str(err)
    # a label the plan does not know about (the project's, on another table) is refused as well
    raw = spec()
    raw["serving"]["plan"]["tables"]["logins"]["columns"]["success"] = "int64"  # in the logins window
    raw["tables"]["logins"]["labels"] = {"success": "1 days"}
    err = error_of(raw)
    assert err.field.startswith("serving.plan.distillation.real_time_columns") and "logins.success" in str(err)


def test_task_horizon_past_the_data(bank_dir):
    raw = yaml.safe_load((bank_dir / "project.yaml").read_text())
    raw["base_tasks"][0]["horizon"] = "30 days"
    project = parse_project(raw, bank_dir)
    with pytest.raises(SpecError, match=r"^base_tasks\[0\]\.horizon: 30 days is past the data"):
        load_tables(project)


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["tables"]["accounts"].update(colour="red"), "tables.accounts.colour"),
    (lambda r: r["tables"]["accounts"]["columns"].update(x="decimal"), "tables.accounts.columns.x"),
    (lambda r: r["base_tasks"][0].update(horizon="soon"), "base_tasks[0].horizon"),
    (lambda r: r["base_tasks"][0].update(entity="users"), "base_tasks[0].entity"),
    (lambda r: r["base_tasks"][0].update(filter={"fraud": 1}), "base_tasks[0].filter.fraud"),
    (lambda r: r["base_tasks"][1].update(label="amount"), "base_tasks[1].label"),
    (lambda r: r["serving"]["plan"].update(fact_table="payments"), "serving.plan.fact_table"),
    (lambda r: r.update(base_tasks=[]), "base_tasks"),
])
def test_other_errors_name_the_field(mutate, field):
    raw = spec()
    mutate(raw)
    assert error_of(raw).field == field


def test_draft_spec_of_a_directory_of_files(bank_dir):
    """"A directory of Parquet/CSV files": keys, time columns and links are guessed; adding a task
    makes it a valid project."""
    from offline.data.adapters import draft_spec

    raw = draft_spec(bank_dir)
    assert set(raw["tables"]) == {"customers", "accounts", "devices", "merchants", "card_payments", "logins"}
    pay = raw["tables"]["card_payments"]
    assert pay["primary_key"] == "payment_id" and pay["time_column"] == "payment_time"
    assert pay["columns"]["amount"] == "numeric" and pay["columns"]["is_fraud"] == "numeric"
    links = {(link["table"], link["column"], link["references"]) for link in raw["links"]}
    assert ("card_payments", "device_id", "devices") in links and ("logins", "customer_id", "customers") in links
    raw["tables"]["card_payments"]["labels"] = {"is_fraud": "7 days"}
    raw["base_tasks"] = [{"name": "fraud", "kind": "fact_label", "table": "card_payments", "label": "is_fraud"}]
    project = parse_project(raw, bank_dir)
    assert len(load_tables(project).table("logins")) > 0


def test_complete_journey_adapter_writes_a_valid_next_item_project(tmp_path):
    from offline.data.adapters import complete_journey_project

    project = load_project(complete_journey_project(tmp_path, max_rows=150_000, test_weeks=1))
    assert isinstance(project.tasks[0], NextItemTask) and project.plan.is_ranking
    assert project.embedding_entity_types == ("households", "products")
    ds = load_tables(project)
    assert len(ds.table("transactions")) == 150_000
    assert "department" in project.feature_columns("products")
