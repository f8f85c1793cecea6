"""A tiny two-layer multi-task regression network for the method tests."""
import torch
from torch import nn


class TinyMultiTask(nn.Module):
    def __init__(self, n_tasks: int = 3, d_in: int = 4, d_hidden: int = 6):
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(d_hidden, 1) for _ in range(n_tasks)])

    def forward(self, x):
        h = self.shared(x)
        return [head(h) for head in self.heads]

    def losses(self, batch):
        x, ys = batch
        return torch.stack([((out - y) ** 2).mean() for out, y in zip(self(x), ys)])

    def shared_parameters(self):
        return list(self.shared.parameters())

    def task_specific_parameters(self):
        return list(self.heads.parameters())


def make_batch(n_tasks=3, n=16, d_in=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    return x, [torch.randn(n, 1, generator=g) for _ in range(n_tasks)]


def flat_grads(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


def task_gradients(model, batch):
    """Rows: ∇L_k over the shared parameters; and over the task-specific ones."""
    losses = model.losses(batch)
    shared, specific = [], []
    for k in range(len(losses)):
        g = torch.autograd.grad(losses[k], model.shared_parameters() + model.task_specific_parameters(),
                                retain_graph=True, allow_unused=True)
        n = len(model.shared_parameters())
        shared.append(torch.cat([t.reshape(-1) for t in g[:n]]))
        specific.append(torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                                   for t, p in zip(g[n:], model.task_specific_parameters())]))
    return torch.stack(shared), torch.stack(specific)


def run_backward(method, model, batch, representation=False):
    model.zero_grad(set_to_none=True)
    if representation:
        x, ys = batch
        h = model.shared(x)
        losses = torch.stack([((head(h) - y) ** 2).mean() for head, y in zip(model.heads, ys)])
        info = method.backward(losses, model.shared_parameters(), model.task_specific_parameters(), representation=h)
    else:
        info = method.backward(model.losses(batch), model.shared_parameters(), model.task_specific_parameters())
    return info, flat_grads(model.shared_parameters()), flat_grads(model.task_specific_parameters())
