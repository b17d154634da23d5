"""One shallow model API for both plan kinds: the plan picks the head, the outputs and the weights file."""
import numpy as np
import pytest

from offline.distillation.shallow_model import (RankingModel, ScoringModel, build_model, load_model, save_model,
                                                serve)
from offline.distillation.trainer import train_shallow
from offline.embeddings import EmbeddingTable, write_embeddings_parquet
from offline.export import synthetic_requests
from schemas.plan_loading import builtin_plan
from schemas.tensors import stack_requests


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("emb") / "e.parquet"
    write_embeddings_parquet(path, [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 8), np.float32))
    return path


@pytest.mark.parametrize("name, cls", [("fraud", ScoringModel), ("recsys", RankingModel)])
def test_the_plan_picks_the_head_and_serve_answers_the_plans_outputs(name, cls, table):
    plan = builtin_plan(name)
    model = build_model(plan, 8, seed=0)
    assert isinstance(model, cls)
    reqs = synthetic_requests(plan, n=3)
    out = serve(model, plan, stack_requests(plan, reqs), EmbeddingTable.from_parquet(table, plan))
    assert set(out) == {o.name for o in plan.outputs}
    assert out["score"].shape[0] == 3 and out["cold_start"].tolist() == [[1, 1]] * 3  # empty table: cold starts


def test_a_weights_file_only_loads_for_a_plan_of_its_kind(tmp_path):
    fraud, recsys = builtin_plan("fraud"), builtin_plan("recsys")
    path = save_model(tmp_path / "m.pt", build_model(fraud, 8, seed=1), fraud)
    back = load_model(path, fraud)
    assert isinstance(back, ScoringModel)
    with pytest.raises(ValueError, match="scoring model, but plan 'recsys' needs a ranking model"):
        load_model(path, recsys)


def test_the_trainer_takes_labels_for_scoring_rows_only(table):
    from offline.distillation.replay import TrainingRows

    plan = builtin_plan("fraud")
    rows = TrainingRows.allocate(plan, 4)
    with pytest.raises(ValueError, match="scoring plans need 0/1 labels"):
        train_shallow(rows, EmbeddingTable.from_parquet(table, plan), progress=False)
    ranking = TrainingRows.allocate(builtin_plan("recsys"), 4, max_candidates=3)
    with pytest.raises(ValueError, match="ranking rows carry their own"):
        train_shallow(ranking, EmbeddingTable.from_parquet(table, ranking.plan), labels=np.zeros(4), progress=False)
