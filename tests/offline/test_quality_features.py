"""The LightGBM baseline's engineered features, generic over the spec."""
import numpy as np

from offline.data.adapters import fraud_project
from offline.data.sources import load_tables
from offline.data.spec import load_project
from offline.datasets.fraud import TINY
from offline.evaluate import FEATURES, WINDOWS_DAYS
from offline.evaluate import engineered_features as published_features
from offline.quality.features import FactColumns, engineered_features


def test_generic_features_equal_the_published_ones_on_fraud(tmp_path):
    project = load_project(fraud_project(tmp_path, TINY))
    tx = load_tables(project).table("transactions")
    new = engineered_features(tx, FactColumns.of(project, "transactions"))
    old = published_features(tx, 7)
    same = {"tx_amount": "tx_amount", "tx_during_weekend": "tx_datetime_weekend",
            "tx_during_night": "tx_datetime_night"}
    for w in WINDOWS_DAYS:
        same |= {f"customer_nb_tx_{w}d": f"customer_id_count_{w}d",
                 f"customer_avg_amount_{w}d": f"customer_id_mean_tx_amount_{w}d",
                 f"terminal_nb_tx_{w}d": f"terminal_id_tx_fraud_count_{w}d",
                 f"terminal_risk_{w}d": f"terminal_id_tx_fraud_rate_{w}d"}
    assert set(same) == set(FEATURES)
    for a, b in same.items():
        np.testing.assert_array_equal(old[a].to_numpy(np.float64), new[b].to_numpy(np.float64), err_msg=a)
