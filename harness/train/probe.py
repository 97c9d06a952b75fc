"""Evaluations on cached frozen features: a converged logistic-regression probe and DINO's weighted k-NN.

Why. `model.heads.LinearProbe` is trained by SGD for a few epochs inside the training loop and stops far from its
optimum (30 % top-1 where a converged probe on the same frozen features reaches ~50 %), so its number measures the
probe's optimisation budget as much as the features. Here the features are extracted once (`extract_features`) and
every classifier on them is solved to a checked tolerance: the result depends on the features and the protocol only.

Protocol.
- Linear probe (`linear_probe`): multinomial logistic regression on features standardised with the training mean and
  (population) std; objective  mean cross-entropy + l2 / 2 * ||W||^2,  bias not penalised. Strictly convex for
  l2 > 0, so the optimum is unique. Solved full-batch in float64 by L-BFGS with a strong-Wolfe line search until the
  gradient's largest entry is below `tol` (`converged` says whether it was). l2 is chosen on the training features
  only, by stratified k-fold cross-validated top-1 (`select_l2`), then the probe is refit on all training features.
- k-NN (`knn_classify`): DINO's weighted k-NN (facebookresearch/dino, eval_knn.py `knn_classifier`), with its
  defaults k = 20 and T = 0.07: features L2-normalised, cosine similarity of each test feature to every training
  feature, the k most similar vote for their label with weight exp(sim / T), top-1 / top-5 from the summed votes
  (top-5 over the classes sorted by votes, as DINO counts it; top-min(5, k) when k < 5). DINO leaves ties to
  `topk` / `sort`; here they are deterministic: among equally similar training features the lower index is the
  neighbour, among equal vote scores the lower class ranks first. Test rows are processed in chunks.

All functions are pure torch and run on the device their input features are on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_CV_TOL",
    "DEFAULT_L2_GRID",
    "LinearFit",
    "accuracy",
    "extract_features",
    "fit_logistic",
    "knn_classify",
    "knn_votes",
    "linear_probe",
    "predict",
    "select_l2",
]

# One value per decade. With the objective's mean cross-entropy, l2 = 1 / (n * C) in scikit-learn's terms: for the
# thousands of samples we probe, 1e-6 is close to unregularised and 1e1 shrinks the probe to near nearest-centroid.
DEFAULT_L2_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1e0, 1e1)
# On the float64 gradient's largest entry. The objective is O(1) (a mean cross-entropy) whatever N, so one absolute
# tolerance fits every dataset. Measured on 20k x 384 correlated synthetic features (l2 = 1e-6, the grid's hardest
# point): tol 1e-5 leaves the objective 1e-4 (relative) above its optimum, tol 1e-6 leaves 1e-6, at ~1.8x the
# iterations; accuracy moved by < 0.1 point between the two. float64 rounding (~1e-13) is far below.
DEFAULT_TOL = 1e-6
# The cross-validation that picks l2 compares decades of it: its fits stop 100x earlier (a few % of the iterations).
DEFAULT_CV_TOL = 1e-4
# That hardest point took ~900-1200 L-BFGS iterations from zero; stronger l2 take tens to a few hundred.
DEFAULT_MAX_ITER = 3000


# ---------------------------------------------------------------------------------------------------------------------
# Features


@torch.no_grad()
def extract_features(
    fn: Callable[[Tensor], Tensor],
    dataset,
    batch_size: int,
    device: torch.device | str,
    workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Features [N, D] (float32, CPU) and labels [N] (long) of a dataset of (image, int label) items, in order.

    `fn(images [B, ...]) -> [B, D]` is a frozen encoder's feature function (put its module in eval mode first). It runs
    under `no_grad`, and under autocast when `amp_dtype` is given. Features stay on `device` until the end and are
    moved to the CPU once, so nothing waits for the device per batch. `progress(done, total)` is called after each
    batch with sample counts.
    """
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda"
    )
    feats, labels, done, total = [], [], 0, len(dataset)
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, amp_dtype) if amp_dtype else nullcontext():
            out = fn(images)
        if out.ndim != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(
                f"fn must map [B, ...] images to [B, D] features, got {tuple(out.shape)} for B={len(images)}"
            )
        feats.append(out.float())
        labels.append(torch.as_tensor(targets))
        done += len(images)
        if progress is not None:
            progress(done, total)
    if not feats:
        raise ValueError("empty dataset")
    return torch.cat(feats).cpu(), torch.cat(labels).long()


def accuracy(scores: Tensor, labels: Tensor, topk: Sequence[int] = (1, 5)) -> tuple[float, ...]:
    """Top-k accuracies (%) of class scores [N, C] against labels [N]; k is capped at C, ties go to the lower class."""
    hits = _hits(scores, labels.to(scores.device), topk)
    return tuple((100.0 * hits / len(labels)).tolist())


def _hits(scores: Tensor, labels: Tensor, topk: Sequence[int]) -> Tensor:
    """[len(topk)] counts of rows whose label is among the k best scores, without a host sync."""
    ks = [min(k, scores.shape[1]) for k in topk]
    ranked = scores.argsort(dim=1, descending=True, stable=True)[:, : max(ks)]  # stable: ties -> lower class first
    correct = ranked == labels[:, None]
    return torch.stack([correct[:, :k].any(1).sum() for k in ks])


# ---------------------------------------------------------------------------------------------------------------------
# Logistic regression


@dataclass(frozen=True, eq=False)
class LinearFit:
    """A fitted multinomial logistic-regression probe; `predict` applies the standardisation then the linear map."""

    weight: Tensor  # [C, D], float64, on standardised features
    bias: Tensor  # [C], float64
    mean: Tensor  # [D], training features' mean
    std: Tensor  # [D], training features' population std (1 where a feature is constant)
    l2: float
    loss: float  # final training objective: mean cross-entropy + l2 / 2 * ||W||^2
    grad_norm: float  # the final gradient's largest absolute entry (inf-norm), over W and b
    iterations: int  # L-BFGS iterations
    converged: bool  # grad_norm <= tol was reached within max_iter


def _standardisation(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population std [D] of float64 features [N, D]; a constant feature gets std 1."""
    mean = x.mean(0)
    std = x.std(0, correction=0)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _objective(z: Tensor, y: Tensor, weight: Tensor, bias: Tensor, l2: float) -> Tensor:
    return F.cross_entropy(torch.addmm(bias, z, weight.T), y) + 0.5 * l2 * weight.square().sum()


@contextmanager
def _small_problem_threads(x: Tensor):
    """One CPU thread for a small problem: L-BFGS on a few hundred thousand numbers is thousands of tiny kernels, and
    with several threads each one pays the thread pool's synchronisation (measured on 2 busy cores: 200 x 784 pixel
    features, l2 0.1: 125 s with 2 threads, 1.1 s with 1)."""
    if x.device.type != "cpu" or x.numel() > 2_000_000 or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_logistic(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float = 1e-4,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    init: LinearFit | None = None,
) -> LinearFit:
    """Multinomial logistic regression on features x [N, D] with labels y [N], solved to `tol` (see module docstring).

    Full-batch L-BFGS (strong-Wolfe line search) in float64 on x's device, from zero weights or from `init`'s (a warm
    start, e.g. the solution for a neighbouring l2 on the same features). Stops when the gradient's largest entry is
    at most `tol`, or after `max_iter` iterations; `converged` tells which. Works under an outer `torch.no_grad()`.
    """
    with _small_problem_threads(x):
        return _fit_logistic(x, y, num_classes, l2, max_iter, tol, init)


def _fit_logistic(
    x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int, tol: float, init: LinearFit | None
) -> LinearFit:
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"expected x [N, D] and y [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.detach().double()
    y = y.to(x.device).long()
    mean, std = _standardisation(x)
    z = (x - mean) / std
    shape = (num_classes, x.shape[1])
    if init is None:
        weight = torch.zeros(shape, dtype=torch.float64, device=x.device)
        bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    else:
        weight, bias = init.weight.to(x.device).clone(), init.bias.to(x.device).clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    # tolerance_change=0: stop on the gradient only (or max_iter), never on a small step or a small loss change.
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=4 * max_iter,
        tolerance_grad=tol,
        tolerance_change=0.0,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _objective(z, y, weight, bias, l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        loss = closure()  # the final objective and gradient (L-BFGS's step returns the first loss)
    grad_norm = max(weight.grad.abs().max().item(), bias.grad.abs().max().item())
    return LinearFit(
        weight=weight.detach(),
        bias=bias.detach(),
        mean=mean,
        std=std,
        l2=float(l2),
        loss=loss.item(),
        grad_norm=grad_norm,
        iterations=int(opt.state[weight].get("n_iter", 0)),
        converged=grad_norm <= tol,
    )


def predict(fit: LinearFit, x: Tensor) -> Tensor:
    """Logits [N, C] (float64, on x's device) of a fitted probe on raw (unstandardised) features x [N, D]."""
    z = (x.double() - fit.mean.to(x.device)) / fit.std.to(x.device)
    return torch.addmm(fit.bias.to(x.device), z, fit.weight.to(x.device).T)


def _stratified_folds(y: Tensor, folds: int, seed: int) -> Tensor:
    """[N] fold id of each sample: each class shuffled, then dealt round-robin, continuing across classes."""
    gen = torch.Generator().manual_seed(seed)
    y = y.cpu()
    fold = torch.empty(len(y), dtype=torch.long)
    dealt = 0
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        fold[members] = (torch.arange(len(members)) + dealt) % folds
        dealt += len(members)
    return fold


def select_l2(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    grid: Sequence[float] = DEFAULT_L2_GRID,
    folds: int = 5,
    seed: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
) -> tuple[float, dict[float, float]]:
    """The l2 of `grid` with the best stratified `folds`-fold cross-validated top-1 on training features x [N, D].

    Returns (l2, {l2: CV top-1 %}). Accuracy ties go to the lower held-out cross-entropy. Within a fold the fits run
    from the strongest l2 to the weakest, each warm-started from the previous one. Only the given features are used:
    pass the training set, never the test set.
    """
    if not 2 <= folds <= len(y):
        raise ValueError(f"folds must be in 2..{len(y)}, got {folds}")
    grid = sorted({float(v) for v in grid}, reverse=True)
    fold = _stratified_folds(y, folds, seed).to(x.device)
    y = y.to(x.device).long()
    hits = dict.fromkeys(grid, 0)
    xent = dict.fromkeys(grid, 0.0)
    unconverged = 0
    for f in range(folds):
        train, held = fold != f, fold == f
        fit = None
        for l2 in grid:
            fit = fit_logistic(x[train], y[train], num_classes, l2, max_iter, tol, init=fit)
            unconverged += not fit.converged
            logits = predict(fit, x[held])
            hits[l2] += int(_hits(logits, y[held], (1,))[0])
            xent[l2] += F.cross_entropy(logits, y[held], reduction="sum").item()
    if unconverged:
        warnings.warn(f"select_l2: {unconverged} of {folds * len(grid)} fits did not reach tol={tol}", stacklevel=2)
    cv_top1 = {l2: 100.0 * hits[l2] / len(y) for l2 in sorted(grid)}
    best = max(grid, key=lambda l2: (hits[l2], -xent[l2]))
    return best, cv_top1


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    grid: Sequence[float] = DEFAULT_L2_GRID,
    folds: int = 5,
    seed: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    cv_tol: float = DEFAULT_CV_TOL,
) -> dict:
    """The converged linear probe: l2 by cross-validation on the training features, refit on all of them, tested once.

    Features [N, D] / [M, D], labels [N] / [M]. With a one-value grid that l2 is used and no CV is run (cv_top1 is
    empty). The cross-validation fits stop at `cv_tol` (choosing among decades of l2 needs no more), the final fit at
    `tol`. Returns top1, top5 (test %), l2, cv_top1 ({l2: CV top-1 %}), and the final fit's final_loss, grad_norm,
    iterations, converged.
    """
    if len(grid) == 1:
        l2, cv_top1 = float(grid[0]), {}
    else:
        l2, cv_top1 = select_l2(train_x, train_y, num_classes, grid, folds, seed, max_iter, max(tol, cv_tol))
    fit = fit_logistic(train_x, train_y, num_classes, l2, max_iter, tol)
    top1, top5 = accuracy(predict(fit, test_x.to(train_x.device)), test_y, (1, 5))
    return {
        "top1": top1,
        "top5": top5,
        "l2": l2,
        "cv_top1": cv_top1,
        "final_loss": fit.loss,
        "grad_norm": fit.grad_norm,
        "iterations": fit.iterations,
        "converged": fit.converged,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Weighted k-NN (DINO)


def _neighbours(sim: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k most similar columns of each row of sim [B, N]: indices and similarities [B, k], most similar first.

    Deterministic under ties: at the k-th similarity the lowest indices are taken, and equal similarities are listed
    by index. This fixes the order in which votes are summed too.
    """
    kth = sim.topk(k, dim=1).values[:, -1:]  # [B, 1]
    above, tied = sim > kth, sim == kth
    room = k - above.sum(1, keepdim=True)  # how many of the tied columns are neighbours
    take = above | (tied & (tied.cumsum(1, dtype=torch.int32) <= room))  # exactly k per row
    idx = take.to(torch.uint8).topk(k, dim=1).indices.sort(dim=1).values  # the k taken columns, by index
    sims, order = sim.gather(1, idx).sort(dim=1, descending=True, stable=True)
    return idx.gather(1, order), sims


def _knn_chunks(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, num_classes: int, k: int, temperature: float, chunk: int
) -> Iterator[tuple[slice, Tensor]]:
    """(rows, votes [rows, C] float64) for consecutive chunks of test rows; see `knn_votes`."""
    if k < 1 or chunk < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1, chunk >= 1, temperature > 0; got {k}, {chunk}, {temperature}")
    device = train_x.device
    train = F.normalize(train_x.float(), dim=1)
    test = F.normalize(test_x.float(), dim=1).to(device)
    train_y = train_y.to(device).long()
    k = min(k, len(train))
    for start in range(0, len(test), chunk):
        rows = slice(start, min(start + chunk, len(test)))
        idx, sims = _neighbours(test[rows] @ train.T, k)
        weights = (sims.double() / temperature).exp()
        votes = torch.zeros(len(idx), num_classes, dtype=torch.float64, device=device)
        yield rows, votes.scatter_add_(1, train_y[idx], weights)


@torch.no_grad()
def knn_votes(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 256,
) -> Tensor:
    """DINO's weighted k-NN vote scores [M, C] (float64) of test features [M, D] from train features [N, D], labels [N].

    votes[i, c] = sum of exp(cos(test_i, train_j) / T) over the k neighbours j of test_i with label c.
    """
    return torch.cat([votes for _, votes in _knn_chunks(train_x, train_y, test_x, num_classes, k, temperature, chunk)])


@torch.no_grad()
def knn_classify(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 256,
) -> dict[str, float]:
    """DINO's weighted k-NN classifier: {"top1", "top5"} (%) of test features [M, D] against train features [N, D].

    Runs on train_x's device, `chunk` test rows at a time: peak memory is about 16 bytes * chunk * N beyond the
    features. top5 is top-min(5, k) as in DINO.
    """
    hits = torch.zeros(2, dtype=torch.long, device=train_x.device)
    test_y = test_y.to(train_x.device)
    topn = (1, min(5, k))
    for rows, votes in _knn_chunks(train_x, train_y, test_x, num_classes, k, temperature, chunk):
        hits += _hits(votes, test_y[rows], topn)
    top1, top5 = (100.0 * hits / len(test_y)).tolist()
    return {"top1": top1, "top5": top5}
