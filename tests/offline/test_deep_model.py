"""The deep model: trimmed message passing gives the full computation's seed outputs."""
import numpy as np
import torch

from offline.datasets.base import NS_PER_DAY
from offline.datasets.fraud import TINY, generate_dataset
from offline.deep_model import DeepModelConfig, TemporalHeteroGNN
from offline.graph import NODE_TYPES, build_graph
from offline.sampler import SamplerConfig, sample_subgraphs


def test_trimmed_layers_equal_full_heteroconv():
    ds = generate_dataset(TINY)
    g = build_graph(ds)
    t = int(g.edge_time.min()) + 20 * NS_PER_DAY
    rng = np.random.default_rng(0)
    for layers, fanouts in ((2, (6, 4)), (3, (4, 3, 2))):
        torch.manual_seed(0)
        model = TemporalHeteroGNN(DeepModelConfig(hidden=16, embedding_dim=8, num_layers=layers)).eval()
        seeds = {n: (rng.integers(0, g.num_nodes[n], 30), np.full(30, t)) for n in NODE_TYPES}
        batch = sample_subgraphs(g, seeds, SamplerConfig(fanouts))
        with torch.no_grad():
            full, trimmed = model.node_states(batch, trim=False), model.node_states(batch, trim=True)
        for n in NODE_TYPES:
            k = batch[n].num_seeds
            torch.testing.assert_close(trimmed[n][:k], full[n][:k], rtol=1e-5, atol=1e-6)
        assert max(int(batch[n].hop.max()) for n in NODE_TYPES) == len(fanouts)
        assert all((batch[n].hop[:batch[n].num_seeds] == 0).all() for n in NODE_TYPES)
