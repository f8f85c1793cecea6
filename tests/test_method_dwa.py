"""DWA (methods/dwa.py) against the official MTAN code (lorenmt/mtan ``im2im_pred/utils.py`` ``multi_task_trainer``,
lines 138-147 and 165-166) and, for ``ratio="window"``, Nash-MTL's ``DynamicWeightAverage`` (AvivNavon/nash-mtl
``methods/weight_methods.py`` lines 744-791), each transcribed below in a few lines of NumPy."""
import numpy as np
import pytest
import torch

from methods.dwa import DWA

# λ is formed in float64 (ratios and softmax, in both) and cast to float32: ≤ ½ float32 ulp (2⁻²⁴ relative) from the
# float64 value, plus float64 round-off; the gradients Σ_k λ_k ∇L_k here have terms of one sign, so the same relative
# bound; 2⁻²³ leaves a factor 2
F32_CAST = dict(rtol=2.0 ** -23, atol=0)


def mtan_lambda(avg_cost, index, T=2.0):
    """utils.py lines 139-147 for K tasks: ones in epochs 0 and 1, then K softmax of the last two epochs' ratios."""
    if index == 0 or index == 1:
        return np.ones(avg_cost.shape[1])
    w = avg_cost[index - 1] / avg_cost[index - 2]
    return len(w) * np.exp(w / T) / np.exp(w / T).sum()


def linear_problem(rows):
    theta = torch.nn.Parameter(torch.zeros(len(rows[0]), dtype=torch.float64))
    phis = [torch.nn.Parameter(torch.ones(2, dtype=torch.float64)) for _ in rows]

    def losses():  # ∇_θ L_k = rows_k; ∇_φk L_k = (k+1)·1
        return torch.stack([torch.tensor(r, dtype=torch.float64) @ theta + 0.5 * (k + 1) * (phis[k] ** 2).sum()
                            for k, r in enumerate(rows)])
    return theta, phis, losses


def test_epoch_weights_and_update_follow_mtan():
    """Five epochs of mean losses: λ = 1 in epochs 0 and 1, then MTAN's λ; every step's update is Σ_k λ_k ∇L_k on
    shared parameters and heads (utils.py lines 165-166). float64 ratios and softmax in both, λ cast to float32:
    ``F32_CAST``."""
    means = np.array([[2.0, 1.0, 0.5], [1.5, 0.9, 0.5], [1.0, 0.8, 0.6], [0.9, 0.8, 0.3], [0.8, 0.7, 0.3]])
    rows = [(1.0, 0.0), (0.0, 2.0), (1.0, 1.0)]
    theta, phis, losses = linear_problem(rows)
    method = DWA(3)
    assert method.temperature == 2.0 and method.ratio == "epoch"  # --temp 2.0, per epoch
    for epoch in range(len(means)):
        expected = mtan_lambda(means, epoch)
        theta.grad = None
        for phi in phis:
            phi.grad = None
        info = method.backward(losses(), [theta], phis)
        np.testing.assert_allclose(info["weights"].numpy(), expected, **F32_CAST)
        np.testing.assert_allclose(theta.grad.numpy(), expected @ np.array(rows), **F32_CAST)
        for k, phi in enumerate(phis):
            np.testing.assert_allclose(phi.grad.numpy(), expected[k] * (k + 1) * np.ones(2), **F32_CAST)
        method.end_of_epoch(torch.tensor(means[epoch]))
    # by hand, epoch 2: ratios (0.75, 0.9, 1.0), λ = 3 softmax(ratios / 2)
    r = np.array([0.75, 0.9, 1.0])
    # exact: the quotients 1.5/2, 0.9/1, 0.5/0.5 are exactly 0.75, 0.9, 1.0, then the same NumPy operations
    np.testing.assert_allclose(mtan_lambda(means, 2), 3 * np.exp(r / 2) / np.exp(r / 2).sum(), rtol=0, atol=0)


def test_a_task_without_a_ratio_gets_no_change():
    """A NaN epoch mean (no valid target in the epoch) or a previous mean of 0 gives w_k = 1 (ours: MTAN has no
    such case); the other tasks' ratios are used as usual."""
    method = DWA(3)
    method.end_of_epoch(torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64))
    method.end_of_epoch(torch.tensor([0.5, 1.0, float("nan")], dtype=torch.float64))
    w = np.array([0.5, 1.0, 1.0])
    np.testing.assert_allclose(method.weights.numpy(), 3 * np.exp(w / 2) / np.exp(w / 2).sum(), **F32_CAST)


def nash_mtl_weights(loss_rows, n_tasks, window=25, temp=2.0):
    """weight_methods.py lines 761-790 (DynamicWeightAverage.get_weighted_loss): the weights applied at each call."""
    costs = np.ones((window * 2, n_tasks), dtype=np.float64)
    weights = np.ones(n_tasks)
    running_iterations, applied = 0, []
    for cost in loss_rows:
        costs[:-1, :] = costs[1:, :]
        costs[-1, :] = cost
        if running_iterations > window:
            ws = costs[window:, :].mean(0) / costs[:window, :].mean(0)
            weights = (n_tasks * np.exp(ws / temp)) / (np.exp(ws / temp)).sum()
        applied.append(weights.copy())
        running_iterations += 1
    return np.array(applied)


def test_window_mode_follows_nash_mtl():
    """``ratio="window"``, window 3, nine steps of varying losses: the weights Nash-MTL's code applies at each call
    (its FIFO starts with ones). float64 in both, λ cast to float32: ``F32_CAST``."""
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 2.0, size=(9, 3))
    theta = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    method = DWA(3, ratio="window", window=3)
    observed = []
    for step in range(9):
        losses = torch.as_tensor(scale[step]) * (theta ** 2)
        observed.append(method.backward(losses, [theta])["weights"].numpy())
    expected = nash_mtl_weights(scale, 3, window=3)  # the loss values are scale · 1
    np.testing.assert_allclose(np.array(observed), expected, **F32_CAST)
    assert not np.allclose(expected[-1], 1.0)  # the weights did change


def test_resume_continues_exactly():
    """state_dict after two epochs and one more epoch's mean; a restored DWA gives the same weights after the next."""
    method = DWA(3)
    for means in ([2.0, 1.0, 0.5], [1.5, 0.9, 0.5], [1.0, 0.8, 0.6]):
        method.end_of_epoch(torch.tensor(means, dtype=torch.float64))
    restored = DWA(3)
    restored.load_state_dict(method.state_dict())
    for m in (method, restored):
        m.end_of_epoch(torch.tensor([0.9, 0.8, 0.3], dtype=torch.float64))
    torch.testing.assert_close(method.weights, restored.weights, rtol=0, atol=0)  # same state, same operations
    window = DWA(2, ratio="window", window=2)
    theta = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    for step in range(4):
        window.backward(torch.tensor([1.0 + step, 2.0], dtype=torch.float64) * theta ** 2, [theta])
    twin = DWA(2, ratio="window", window=2)
    twin.load_state_dict(window.state_dict())
    a = window.backward(torch.tensor([0.5, 3.0], dtype=torch.float64) * theta ** 2, [theta])["weights"]
    b = twin.backward(torch.tensor([0.5, 3.0], dtype=torch.float64) * theta ** 2, [theta])["weights"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # same state, same operations


def test_window_mode_refuses_micro_batches_and_bad_settings():
    theta = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="ratio='window'"):
        DWA(2, ratio="window").accumulate(theta ** 2, [theta])
    with pytest.raises(ValueError, match="ratio"):
        DWA(2, ratio="iteration")
    assert DWA.in_paper is False and DWA.uses_main_task is False and DWA.label == "DWA"
