"""The learned logit scale is kept in [1, max_scale] without getting stuck outside it."""

import math

import torch

from fastvit.tasks.clip.objective import LogitScale


def test_logit_scale_is_capped_and_comes_back_from_above_the_cap():
    ls = LogitScale("infonce", init_temperature=0.07, max_scale=100.0)
    assert math.isclose(ls().item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        ls.log_scale.fill_(math.log(100.0) + 0.5)  # momentum carried it past the cap
    assert math.isclose(ls().item(), 100.0, rel_tol=1e-5)
    (-ls()).sum().backward()  # a loss that wants a larger scale: no gradient pushes it further up
    assert ls.log_scale.grad.item() == 0.0
    ls.log_scale.grad = None
    ls().sum().backward()  # a loss that wants a smaller scale reaches the parameter
    assert ls.log_scale.grad.item() > 0.0
    opt = torch.optim.SGD(ls.parameters(), lr=1.0)
    opt.step()
    assert ls.log_scale.item() < math.log(100.0) + 0.5


def test_logit_scale_gradient_inside_the_range_is_the_plain_one():
    ls = LogitScale("infonce", init_temperature=0.1)
    (3.0 * ls()).sum().backward()
    assert math.isclose(ls.log_scale.grad.item(), 3.0 * 10.0, rel_tol=1e-5)  # d exp(s) / ds = exp(s)
