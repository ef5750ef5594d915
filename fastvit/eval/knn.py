"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol)."""

import torch
import torch.nn.functional as F


def knn_classify(train_x_ND, train_y_N, test_x_MD, n_classes, k=20, temperature=0.07, chunk=1024):
    """Predicted class of each test row: the k nearest training rows by cosine similarity vote
    with weight exp(sim / temperature). Returns (M,) int64 predictions."""
    if train_x_ND.shape[0] == 0 or test_x_MD.shape[0] == 0:
        raise ValueError(f"kNN needs training and test features, got {train_x_ND.shape[0]} and {test_x_MD.shape[0]}")
    k = min(k, train_x_ND.shape[0])
    train = F.normalize(train_x_ND.float(), dim=1)
    preds = []
    for start in range(0, test_x_MD.shape[0], chunk):
        test = F.normalize(test_x_MD[start : start + chunk].float(), dim=1)
        sims_MN = test @ train.T
        top_sims_MK, top_idx_MK = sims_MN.topk(k, dim=1)
        weights_MK = (top_sims_MK / temperature).exp()
        votes_MC = torch.zeros(test.shape[0], n_classes)
        votes_MC.scatter_add_(1, train_y_N[top_idx_MK], weights_MK)
        preds.append(votes_MC.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07):
    """Top-1 accuracy (in %) of weighted kNN."""
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    pred = knn_classify(train_x, train_y, test_x, n_classes, k=k, temperature=temperature)
    return 100.0 * (pred == test_y).float().mean().item()
