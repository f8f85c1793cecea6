"""Agreement with the official AuxiNash code in its own NYUv2 training loop (issue 31).

    git --git-dir=<mirror of AvivSham/auxinash> archive HEAD | tar x -C /tmp/official   # or: git clone
    pip install ecos                      # (our extra: pip install -e ".[official]") their solver needs ECOS
    OMP_NUM_THREADS=1 python experiments/agreement_official.py --official /tmp/official --out agreement.csv

Runs the training loop of the official trainer (AvivSham/auxinash ``experiments/nyuv2/trainer.py`` lines 33-272,
imported from the checkout given as ``--official``: their ``SegNet``, ``NYUv2`` dataset, ``calc_loss``,
``WeightMethods("auxinash")``, ``auxinash_hyperstep``) on the synthetic NYUv2 data in the real on-disk layout, and
beside it our AuxiNash, **decoupled**: at every step ours is evaluated at the parameters and on the batch of the
official loop, then the official step runs as if ours were not there; the model only ever follows the official
updates. Ours keeps its own state (its α warm start, its p and p's momentum, learned from its own
hypergradients). Per step it compares:

* ``losses``: the forward pass's three losses (the same computation twice: expected 0);
* ``gram``: their Gram matrix (``self.gtg = GTG.float()``, formed and stored in float32) against ours (float64);
* ``alpha``: their α (``prvs_alpha``, from CVXPY + ECOS on the float32 Gram matrix) against ours (``method.alpha``,
  raw scale, our Newton solve on the float64 Gram matrix);
* ``alpha_our_solver_their_gram``: our solver (``solve_nash``) on their float32 Gram matrix with their p, against
  their α: the two solvers alone, on identical input (theirs);
* ``alpha_their_solver_our_gram``: their solver (a fresh instance of their ``AuxiNash`` with our p and their
  warm start, ``solve_optimization`` on our float64 Gram matrix normalised as they do), against our α: the two
  solvers alone again (p is the same on both sides until the first hyperstep; then each side has its own);
* ``grad_shared`` / ``grad_heads``: ``.grad`` of the shared parameters (after clipping to norm 1) and of the three
  heads after their ``backward`` and after ours;

and on every hyperstep (every ``--hypergrad-every`` steps; the official default is 25):

* ``p_hypergradient``: their ``aux_params_p.grad`` as ``auxinash_hyperstep`` leaves it, before clipping, against
  ours (``p_hypergradient``, before clipping) on the **same** meta-validation and training batches (theirs draws
  them itself, ``next(iter(val_loader))`` then ``next(iter(train_loader))``; the loaders handed to it record what
  it drew);
* ``p_hypergradient_same_inputs[gradients]`` / ``[double_backward]``: ours from a fresh instance of our method
  given their α, Gram matrix and p, with each of our two computations of the mixed term (``mixed_term``; the
  official code's is the double backward): the implicit differentiation alone, on identical input;
* ``p``: p after the update (their ``weight_method.method.p``, ours ``method.p``).

With ``--check-unperturbed``, ``official_unperturbed``: the official loop's final parameters, BatchNorm buffers
and p against a second run of the official loop alone (expected 0).

Each quantity: the relative error ‖a − b‖/‖b‖ and max |a − b|, with b the official loop's value and a ours
(for ``alpha_their_solver_our_gram`` a is their solver's α and b ours; for ``official_unperturbed`` b is the run
alone), per step in ``--out`` (CSV) and the maximum and median over steps in the printed summary.

Our extra evaluation does not perturb their run: BatchNorm's running statistics are put back to what the official
loop alone would have (snapshot before, restore after), ``.grad`` is cleared again, and nothing of ours draws random
numbers. Not run: the per-epoch evaluation on the test split (trainer.py lines 273-358: metrics only, no parameter
changes, BatchNorm in eval mode; it calls ``test_dataset.next()``, which torch 2.13's DataLoader iterators no longer
have, so the unmodified trainer stops there at the end of its first epoch; leaving it out also leaves out the one
random draw its ``iter(test_loader)`` makes, so from the second epoch on the shuffles and augmentations are not
those of a full official run); the metrics and wandb logging.

The official settings are used throughout: Adam lr 1e-4 (+ the method's empty parameter group), StepLR(100, 0.5)
stepped per epoch, ``WeightMethods("auxinash", n_tasks=3, **their defaults)`` (their
``extract_weight_method_parameters_from_args`` has no entry for auxinash: the class defaults, max_norm 1, 20 CCCP
iterations, p = 1), meta SGD lr 5e-3 momentum 0.9, hypergradient clipped at norm 1, ``n_meta_loss_accum`` 1, main
task 0, batch 2, augmentation on (their ``--apply-augmentation`` default), validation set = training set (their
``--partial-data`` default False), their ``set_seed``.

Model sizes (``--widths``): 1.0 is their ``SegNet()`` as it is. A width w < 1 is the same architecture with every
channel count scaled by w (rounded, at least 1), the RGB input's 3 channels and the heads' outputs (13, 1, 3)
excepted: a subclass of their ``SegNetSplit`` whose ``conv_layer`` scales its two channel counts before calling
theirs, with the three ``pred_task*`` heads (built by their ``__init__`` at 64 channels) rebuilt at the scaled width
and initialised as their ``__init__`` initialises convolutions (Xavier-normal weights, zero biases). Nothing else
changes (BatchNorm, pooling, the shared/task-specific split by the name "pred").

Loading: the official checkout and this repository both have top-level ``methods`` and ``experiments`` packages.
Their ``methods``, ``experiments`` and ``implicit_diff`` are loaded from ``--official`` under those names (from the
files, without editing ``sys.path``), ours as ``auxinash_ours`` (our ``methods`` imports only itself) and our data
writer as ``auxinash_data``; so run it as a script (``python experiments/agreement_official.py``), in a process
where our ``methods`` / ``experiments`` have not been imported (it refuses otherwise, saying so). Needs cvxpy and
ecos: without ecos their solver fails inside a bare ``except`` and keeps α = 1 (methods/README.md, "Coming from
the official code"), so the script refuses to start without it.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch.nn.utils.clip_grad import clip_grad_norm_

log = logging.getLogger("agreement_official")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_PACKAGES = ("implicit_diff", "experiments", "methods")  # theirs; loaded in this order (methods last)
REQUIRED_FILE = os.path.join("methods", "weight_methods.py")
REQUIRED_FILES = (REQUIRED_FILE, os.path.join("methods", "auxinash", "hyperstep.py"),
                  os.path.join("experiments", "nyuv2", "models.py"), os.path.join("implicit_diff", "implicit_diff.py"))
GET_OFFICIAL = ("a work tree of AvivSham/auxinash: `git clone https://github.com/AvivSham/auxinash` or, from a bare "
                "mirror, `mkdir -p /tmp/official && git --git-dir=MIRROR archive HEAD | tar x -C /tmp/official`")

# the official trainer's settings (experiments/nyuv2/trainer.py; the rest from their experiments/utils.py
# common_parser, read at run time: method_params_lr 5e-3, main_task 0, seed 42)
LR = 1e-4                 # trainer.py 365 (set_defaults lr=1e-4)
META_LR = 5e-3            # trainer.py 371-376 --meta-lr
N_META_LOSS_ACCUM = 1     # trainer.py --n-meta-loss-accum
OFFICIAL_HYPERGRAD_EVERY = 25  # trainer.py --hypergrad-every
MIXED_TERMS = ("gradients", "double_backward")  # our meta-update's two computations of the mixed term


class OfficialCodeError(RuntimeError):
    """The official checkout cannot be used (missing, incomplete, or its package names already taken)."""


# -- loading the two packages side by side --------------------------------------------------------------------------

def check_official(path: Optional[str]) -> str:
    """The official work tree's absolute path, or ``OfficialCodeError`` saying what is missing and how to get it."""
    if not path:
        raise OfficialCodeError(f"--official is required: the path of {GET_OFFICIAL}")
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise OfficialCodeError(f"--official {path}: no such directory; it must be {GET_OFFICIAL}")
    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(root, name))]
    if missing:
        raise OfficialCodeError(f"--official {path}: not an official AuxiNash checkout (no {', '.join(missing)}); "
                                f"it must be {GET_OFFICIAL}")
    return root


def load_package(name: str, folder: str) -> ModuleType:
    """Import the package in ``folder`` under ``name`` (its submodules resolve through its ``__path__``)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_official(root: str) -> Dict[str, ModuleType]:
    """Their modules, imported from ``root`` under their own top-level names."""
    taken = {name: getattr(sys.modules[name], "__file__", None) for name in OFFICIAL_PACKAGES if name in sys.modules}
    foreign = {name: where for name, where in taken.items()
               if not (where and os.path.abspath(where).startswith(root + os.sep))}
    if foreign:
        raise OfficialCodeError(
            "the official code's top-level packages must be importable under their own names, but in this process "
            + ", ".join(f"`{name}` is already {where}" for name, where in foreign.items())
            + ": run this file as a script, `python experiments/agreement_official.py ...`")
    try:
        import cvxpy  # noqa: F401  (their weight_methods imports it)
        import ecos  # noqa: F401
    except ImportError as error:
        raise OfficialCodeError(f"{error}: the official solver needs cvxpy and ecos (`pip install ecos`, or our "
                                "extra `pip install -e \".[official]\"`); without ecos it silently keeps α = 1"
                                ) from None
    for name in OFFICIAL_PACKAGES:
        if name not in sys.modules:
            load_package(name, os.path.join(root, name))
    names = {"weight_methods": "methods.weight_methods", "hyperstep": "methods.auxinash.hyperstep",
             "models": "experiments.nyuv2.models", "data": "experiments.nyuv2.data",
             "loss_utils": "experiments.loss_utils", "utils": "experiments.utils"}
    return {key: importlib.import_module(module) for key, module in names.items()}


def load_ours() -> Dict[str, ModuleType]:
    """Our ``methods`` as ``auxinash_ours`` and our ``data`` as ``auxinash_data`` (both use relative imports only)."""
    ours = sys.modules.get("auxinash_ours") or load_package("auxinash_ours", os.path.join(REPO, "methods"))
    data = sys.modules.get("auxinash_data") or load_package("auxinash_data", os.path.join(REPO, "data"))
    return {"methods": ours, "nash_solver": importlib.import_module("auxinash_ours.nash_solver"),
            "synthetic": importlib.import_module("auxinash_data.synthetic"), "data": data}


# -- the model at a width -------------------------------------------------------------------------------------------

def build_model(models: ModuleType, width: float) -> torch.nn.Module:
    """Their ``SegNet()`` at width 1; otherwise every channel count scaled (module docstring)."""
    if width == 1.0:
        return models.SegNet()
    nn = torch.nn

    def scaled(channels: int) -> int:
        return max(1, int(round(channels * width)))

    class ScaledSegNetSplit(models.SegNetSplit):
        def conv_layer(self, channel):  # their blocks, with scaled channel counts (3: the RGB input, kept)
            return super().conv_layer([c if c == 3 else scaled(c) for c in channel])

        def __init__(self):
            super().__init__()
            filters = scaled(64)  # their heads' width, filter[0]
            for name in ("pred_task1", "pred_task2", "pred_task3"):
                first, last = getattr(self, name)
                head = nn.Sequential(
                    nn.Conv2d(filters, filters, kernel_size=first.kernel_size, padding=first.padding),
                    nn.Conv2d(filters, last.out_channels, kernel_size=last.kernel_size, padding=last.padding))
                for conv in head:  # as their __init__ initialises every Conv2d
                    nn.init.xavier_normal_(conv.weight)
                    nn.init.constant_(conv.bias, 0)
                setattr(self, name, head)

    class ScaledSegNet(models.SegNet):
        def __init__(self):
            super(models.SegNet, self).__init__()  # their SegNet.__init__ without building the width-1 network
            self.segnet = ScaledSegNetSplit()

    return ScaledSegNet()


# -- helpers ---------------------------------------------------------------------------------------------------------

class RecordingLoader:
    """A data loader that records each batch its iterators yield (what ``next(iter(loader))`` drew)."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.drawn: List = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.drawn.append([t.clone() for t in batch])
            yield batch


def buffers_of(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


def restore_buffers(model: torch.nn.Module, saved: Dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])


def flat_grad(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).double()
                      for p in parameters])


def as64(value) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value),
                           dtype=torch.float64).reshape(-1)


def compare(rows: List[dict], width: float, step: int, quantity: str, value, reference) -> None:
    """One row: ``value`` against ``reference`` (relative to the reference's norm)."""
    value, reference = as64(value), as64(reference)
    difference = (value - reference).abs()
    norm = float(reference.norm())
    rows.append({"width": width, "step": step, "quantity": quantity,
                 "rel_error": float(difference.norm()) / norm if norm > 0 else float(difference.norm()),
                 "max_abs_error": float(difference.max()), "reference_norm": norm})


# -- one width -------------------------------------------------------------------------------------------------------

def run_width(official: Dict[str, ModuleType], ours_modules: Dict[str, ModuleType], args, width: float,
              device: torch.device, with_ours: bool = True) -> Tuple[List[dict], torch.Tensor]:
    """The official loop at ``width`` for ``args.steps`` steps, with ours beside it unless ``with_ours`` is False;
    returns the comparisons and, to check that ours does not perturb it, their final parameters, buffers and p."""
    weight_methods, hyperstep, loss_utils = official["weight_methods"], official["hyperstep"], official["loss_utils"]
    calc_loss = loss_utils.calc_loss
    official["utils"].set_seed(args.seed)  # trainer.py 407: numpy, random, torch

    model = build_model(official["models"], width).to(device)                      # trainer.py 37-38
    n_shared = sum(p.numel() for p in model.shared_parameters())
    n_heads = sum(p.numel() for p in model.task_specific_parameters())
    log.info("width %g: %s shared + %s head parameters", width, f"{n_shared:,}", f"{n_heads:,}")
    dataset = official["data"].NYUv2(root=args.data_root, train=True, augmentation=True)   # trainer.py 48-50
    loader = torch.utils.data.DataLoader  # trainer.py 68-73: --partial-data False, so val set = train set
    train_loader = loader(dataset=dataset, batch_size=args.batch_size, shuffle=True)
    val_loader = loader(dataset=dataset, batch_size=args.batch_size, shuffle=True)

    parser = argparse.ArgumentParser(parents=[official["utils"].common_parser])    # their defaults
    parser.set_defaults(lr=LR, batch_size=args.batch_size, method="auxinash")      # trainer.py 363-369
    official_args = parser.parse_args([])
    parameters = official["utils"].extract_weight_method_parameters_from_args(official_args)   # trainer.py 79-82
    weight_method = weight_methods.WeightMethods("auxinash", n_tasks=3, device=device,
                                                 **parameters["auxinash"])
    optimizer = torch.optim.Adam([dict(params=model.parameters(), lr=official_args.lr),        # trainer.py 95-100
                                  dict(params=weight_method.parameters(), lr=official_args.method_params_lr)])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)           # trainer.py 101
    aux_params_alpha = torch.tensor(weight_method.method.prvs_alpha, dtype=torch.float32,      # trainer.py 104-120
                                    device=device, requires_grad=True)
    aux_params_p = torch.tensor(weight_method.method.p, device=device, requires_grad=True, dtype=torch.float32)
    meta_opt = torch.optim.SGD([aux_params_p], lr=META_LR, momentum=0.9)

    ours = ours_modules["methods"].get_method("auxinash", n_tasks=3, main_task=official_args.main_task,
                                              device=device, mixed_term=args.mixed_term)
    solve_nash = ours_modules["nash_solver"].solve_nash
    hypergradients: List[torch.Tensor] = []
    p_hypergradient = ours.p_hypergradient  # recorded before clipping (meta_update returns it clipped)

    def recording_p_hypergradient(*a, **k):
        hypergradients.append(p_hypergradient(*a, **k))
        return hypergradients[-1]

    ours.p_hypergradient = recording_p_hypergradient

    def compute_losses(batch):  # the three losses as trainer.py 150-164 computes them
        data, label, depth, normal = (t.to(device) for t in batch)
        pred = model(data)
        return torch.stack([calc_loss(pred[0], label.long(), "semantic"), calc_loss(pred[1], depth, "depth"),
                            calc_loss(pred[2], normal, "normal")])

    rows: List[dict] = []
    custom_step = -1
    while custom_step + 1 < args.steps:
        for batch in train_loader:                                                   # trainer.py 144
            custom_step += 1
            if custom_step >= args.steps:
                break
            start = time.perf_counter()
            model.train()                                                            # trainer.py 147-148
            optimizer.zero_grad()
            train_data, train_label, train_depth, train_normal = batch               # trainer.py 150-154
            train_data, train_label = train_data.to(device), train_label.long().to(device)
            train_depth, train_normal = train_depth.to(device), train_normal.to(device)
            shared = list(model.shared_parameters())
            specific = list(model.task_specific_parameters())

            if with_ours:  # ours, at the same parameters and on the same batch; then their state as if not run
                saved = buffers_of(model)
                our_losses = compute_losses(batch)
                ours.backward(our_losses, shared_parameters=shared, task_specific_parameters=specific)
                our_grads = flat_grad(shared), flat_grad(specific)
                restore_buffers(model, saved)
                for parameter in model.parameters():
                    parameter.grad = None
            their_p = np.array(weight_method.method.p, dtype=np.float64)
            their_previous_alpha = np.array(weight_method.method.prvs_alpha, dtype=np.float64)

            train_pred, features = model(train_data, return_representation=True)   # trainer.py 156-172
            losses = torch.stack((calc_loss(train_pred[0], train_label, "semantic"),
                                  calc_loss(train_pred[1], train_depth, "depth"),
                                  calc_loss(train_pred[2], train_normal, "normal")))
            loss, extra_outputs = weight_method.backward(
                losses=losses,
                shared_parameters=list(model.shared_parameters()),
                task_specific_parameters=list(model.task_specific_parameters()),
                last_shared_parameters=list(model.last_shared_parameters()),
                representation=features,
            )
            their_alpha = np.array(weight_method.method.prvs_alpha, dtype=np.float64)
            their_gram = weight_method.method.gtg.detach().cpu()
            if with_ours:
                compare_step(rows, width, custom_step, ours, our_losses, our_grads, losses, model, weight_methods,
                             their_gram, their_alpha, their_p, their_previous_alpha, solve_nash, device)
            optimizer.step()                                                         # trainer.py 174

            hyperstep_now = (custom_step + 1) % args.hypergrad_every == 0
            if hyperstep_now:                                                        # trainer.py 223-246
                before = buffers_of(model)
                val_drawn, train_drawn = RecordingLoader(val_loader), RecordingLoader(train_loader)
                meta_opt.zero_grad()
                hyperstep.auxinash_hyperstep(
                    model=model, train_loader=train_drawn, val_loader=val_drawn, weight_method=weight_method,
                    aux_params_alpha=aux_params_alpha, aux_params_p=aux_params_p,
                    n_meta_loss_accum=N_META_LOSS_ACCUM, main_task=official_args.main_task, device=device)
                their_hypergradient = aux_params_p.grad.detach().clone()  # before clip_grad_norm_
                clip_grad_norm_(aux_params_p, max_norm=1)
                meta_opt.step()
                weight_method.method.set_p(aux_params_p.detach().cpu().numpy())
                with torch.no_grad():
                    aux_params_p.data = torch.from_numpy(weight_method.method.p).to(device)
                if with_ours:
                    after = buffers_of(model)
                    (val_batch,), (train_batch,) = val_drawn.drawn, train_drawn.drawn
                    restore_buffers(model, before)  # ours sees what theirs saw
                    hypergradients.clear()
                    ours.meta_update(compute_losses, train_batch=train_batch, val_batch=val_batch,
                                     shared_parameters=list(model.shared_parameters()),
                                     task_specific_parameters=list(model.task_specific_parameters()))
                    compare(rows, width, custom_step, "p_hypergradient", hypergradients[0], their_hypergradient)
                    for mode in MIXED_TERMS:  # ours given their α, Gram matrix and p: the implicit differentiation
                        same_inputs = ours_modules["methods"].get_method(
                            "auxinash", n_tasks=3, main_task=official_args.main_task, device=device, mixed_term=mode)
                        same_inputs.alpha, same_inputs.gram = torch.from_numpy(their_alpha), their_gram.double()
                        same_inputs.p = torch.from_numpy(their_p)
                        restore_buffers(model, before)
                        compare(rows, width, custom_step, f"p_hypergradient_same_inputs[{mode}]",
                                same_inputs.p_hypergradient(compute_losses, train_batch, val_batch,
                                                            list(model.shared_parameters())), their_hypergradient)
                    compare(rows, width, custom_step, "p", ours.p, weight_method.method.p)
                    restore_buffers(model, after)  # as their hyperstep left them
            log.info("width %g step %d%s%s: %.1f s; α theirs %s%s", width, custom_step,
                     " (hyperstep)" if hyperstep_now else "", "" if with_ours else " (official loop alone)",
                     time.perf_counter() - start, np.array2string(their_alpha, precision=6),
                     f", ours {np.array2string(ours.alpha.numpy(), precision=6)}" if with_ours else "")
        scheduler.step()                                                             # trainer.py 271-272
    final = torch.cat([torch.cat([t.detach().double().reshape(-1) for t in model.state_dict().values()]),
                       torch.as_tensor(weight_method.method.p, dtype=torch.float64)])
    return rows, final


def compare_step(rows, width, step, ours, our_losses, our_grads, losses, model, weight_methods, their_gram,
                 their_alpha, their_p, their_previous_alpha, solve_nash, device) -> None:
    """The comparisons of one training step (module docstring), after their ``backward``."""
    compare(rows, width, step, "losses", our_losses, losses)
    compare(rows, width, step, "gram", ours.gram, their_gram)
    compare(rows, width, step, "alpha", ours.alpha, their_alpha)
    compare(rows, width, step, "alpha_our_solver_their_gram",
            solve_nash(their_gram.double(), their_p, alpha0=their_previous_alpha), their_alpha)
    probe = weight_methods.AuxiNash(n_tasks=3, device=device)  # their solver on our input: our Gram matrix, our p
    probe.p, probe.prvs_alpha = ours.p.numpy().copy(), their_previous_alpha.copy()  # (and their warm start)
    probe._init_optim_problem()
    gram = ours.gram.numpy()
    probe.normalization_factor = np.array([np.linalg.norm(gram)])  # torch.norm(GTG) in their code: Frobenius
    compare(rows, width, step, "alpha_their_solver_our_gram",
            probe.solve_optimization(gram / probe.normalization_factor.item()), ours.alpha)
    compare(rows, width, step, "grad_shared", our_grads[0], flat_grad(list(model.shared_parameters())))
    compare(rows, width, step, "grad_heads", our_grads[1], flat_grad(list(model.task_specific_parameters())))


# -- command line ----------------------------------------------------------------------------------------------------

def summary(frame: pd.DataFrame) -> pd.DataFrame:
    table = frame.groupby(["width", "quantity"], sort=False).agg(
        steps=("step", "count"), max_rel_error=("rel_error", "max"), median_rel_error=("rel_error", "median"),
        max_abs_error=("max_abs_error", "max"))
    return table.reset_index()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="agreement_official.py",
        description="The official AuxiNash NYUv2 trainer's loop with our AuxiNash evaluated beside it (decoupled: "
                    "ours follows the official loop's parameters), reporting the agreement per quantity (α, Gram "
                    "matrix, .grad, p-hypergradient, p). Needs the official code on disk and ecos.",
        epilog="Get the official code: " + GET_OFFICIAL + "; then `pip install ecos`.")
    parser.add_argument("--official", help="the official checkout's work tree (with methods/weight_methods.py)")
    parser.add_argument("--data-root", default=None,
                        help="synthetic (or real) NYUv2 root with train/{image,label,depth,normal}/*.npy; default: "
                             "written into a temporary folder (data/synthetic.py write_nyuv2)")
    parser.add_argument("--n-train", type=int, default=8, help="images written when --data-root is not given")
    parser.add_argument("--shape", type=int, nargs=2, default=(288, 384), metavar=("H", "W"),
                        help="image shape written when --data-root is not given (sides multiples of 32; default the "
                             "real 288 384)")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0],
                        help="model widths: 1 = their SegNet, w < 1 = every channel count scaled by w")
    parser.add_argument("--steps", type=int, default=8, help="training steps per width")
    parser.add_argument("--hypergrad-every", type=int, default=4,
                        help=f"steps between hypersteps (the official default is {OFFICIAL_HYPERGRAD_EVERY}; smaller "
                             "here so that a short run has some)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch size (the official default 2)")
    parser.add_argument("--seed", type=int, default=42, help="their set_seed (the official default 42)")
    parser.add_argument("--mixed-term", default="gradients", choices=("gradients", "double_backward"),
                        help="our meta-update's mixed term (ours' default 'gradients'; 'double_backward' is the "
                             "official computation)")
    parser.add_argument("--check-unperturbed", action="store_true",
                        help="run the official loop a second time alone and compare its final parameters, buffers "
                             "and p with those of the run beside ours (expected: identical; doubles the official "
                             "loop's cost)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--out", default=None, help="CSV of the per-step comparisons")
    args = parser.parse_args(argv)
    try:
        args.official = check_official(args.official)
    except OfficialCodeError as error:
        parser.error(str(error))
    if any(side % 32 for side in args.shape):
        parser.error(f"--shape {args.shape[0]} {args.shape[1]}: both sides must be multiples of 32 (SegNet pools 5 "
                     "times)")
    if any(not 0 < w <= 1 for w in args.widths):
        parser.error(f"--widths {args.widths}: each must be in (0, 1]")
    return args


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    official = load_official(args.official)
    ours_modules = load_ours()
    device = torch.device(args.device)
    digest = hashlib.sha256(open(os.path.join(args.official, REQUIRED_FILE), "rb").read()).hexdigest()[:12]
    log.info("torch %s, %d threads (OMP_NUM_THREADS=%s), device %s; official code %s (weight_methods.py sha256 %s)",
             torch.__version__, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), device, args.official,
             digest)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if args.data_root is None:
            args.data_root = ours_modules["synthetic"].write_nyuv2(os.path.join(scratch, "nyuv2"), n_train=args.n_train,
                                                                   n_test=1, shape=tuple(args.shape))
            log.info("synthetic NYUv2 (%d training images, %d×%d) in %s", args.n_train, *args.shape, args.data_root)
        rows = []
        for width in args.widths:
            compared, final = run_width(official, ours_modules, args, width, device)
            rows += compared
            if args.check_unperturbed:
                _, alone = run_width(official, ours_modules, args, width, device, with_ours=False)
                compare(rows, width, args.steps - 1, "official_unperturbed", final, alone)
    frame = pd.DataFrame(rows)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        frame.to_csv(args.out, index=False)
        log.info("wrote %s", args.out)
    table = summary(frame)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.2e}".format):
        print(table.to_string(index=False))
    log.info("%.0f s in all", time.perf_counter() - started)
    return frame


if __name__ == "__main__":
    main()
