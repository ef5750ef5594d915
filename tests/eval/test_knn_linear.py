import torch

from fastvit.eval.knn import knn_accuracy, knn_classify
from fastvit.eval.linear import linear_probe_accuracy


def _clusters(n_per_class, n_classes=4, dim=16, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    return centers[y] + noise * torch.randn(len(y), dim, generator=g), y


def test_knn_weighted_vote_matches_a_hand_computed_case():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[0.2, 1.0], [1.0, 0.05]])
    # k=3 votes: the class-1 row is far more similar to the first test row, and exp(sim/0.07) wins.
    assert knn_classify(train, labels, test, n_classes=2, k=3).tolist() == [1, 0]


def test_knn_and_linear_separate_clusters_and_fail_on_noise():
    x, y = _clusters(50)
    g = torch.Generator().manual_seed(2)
    idx = torch.randperm(len(x), generator=g)
    train, test = idx[:150], idx[150:]
    assert knn_accuracy(x[train], y[train], x[test], y[test]) > 95
    assert linear_probe_accuracy(x[train], y[train], x[test], y[test], epochs=30, lr=1e-2) > 95
    noise = torch.randn_like(x)
    assert knn_accuracy(noise[train], y[train], noise[test], y[test]) < 60
