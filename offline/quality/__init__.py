"""Quality reports on the deep model's test period: ``scoring`` (deep vs distilled vs LightGBM)
and ``ranking`` (baselines, deep and distilled on test baskets). The split and the metrics live
in :mod:`offline.evaluate`."""
