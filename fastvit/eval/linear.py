"""Linear probe on frozen features: a single linear layer trained with AdamW and cross-entropy."""

import torch
import torch.nn.functional as F


def linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=10, lr=1e-3, batch_size=256, seed=0):
    """Top-1 accuracy (in %) of a linear classifier fit on standardised training features."""
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(train_x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        pred = head(test_x).argmax(1)
    return 100.0 * (pred == test_y).float().mean().item()
