"""Frozen-feature evaluations: the converged logistic probe against scipy, DINO's k-NN against a brute force, the l2
selection, feature extraction."""

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch

from harness.train.probe import (
    accuracy,
    extract_features,
    fit_logistic,
    knn_classify,
    knn_votes,
    linear_probe,
    predict,
    select_l2,
)

C = 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The problems here are tiny: one thread is fastest, and immune to other processes on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(seed: int, n: int, d: int = 48, c: int = C, spread: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian blobs on badly scaled, offset, correlated axes (so the standardisation matters)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(c, d)) * spread
    mix = np.random.default_rng(4321).normal(size=(d, d)) / math.sqrt(d) + np.eye(d)
    scale = np.geomspace(0.01, 100.0, d)
    y = np.arange(n) % c
    x = ((centres[y] + rng.normal(size=(n, d))) @ mix) * scale + 3.0
    return x, y


def _reference_logistic(x: np.ndarray, y: np.ndarray, c: int, l2: float) -> tuple[float, np.ndarray, np.ndarray]:
    """scipy L-BFGS-B on the same objective, written independently in numpy: (objective, W [C, D], b [C])."""
    mean, std = x.mean(0), x.std(0)
    z = (x - mean) / std
    n, d = z.shape
    onehot = np.eye(c)[y]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: c * d].reshape(c, d), theta[c * d :]
        logits = z @ w.T + b
        logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
        value = -np.mean(np.sum(onehot * logp, axis=1)) + 0.5 * l2 * np.sum(w * w)
        residual = (np.exp(logp) - onehot) / n
        return value, np.concatenate([(residual.T @ z + l2 * w).ravel(), residual.sum(0)])

    res = scipy.optimize.minimize(
        objective,
        np.zeros(c * d + c),
        jac=True,
        method="L-BFGS-B",
        options=dict(maxiter=20_000, maxfun=40_000, gtol=1e-11, ftol=1e-16),
    )
    assert np.abs(res.jac).max() < 1e-7, res.message
    w, b = res.x[: c * d].reshape(c, d), res.x[c * d :]
    return float(res.fun), (w / std), b - (w / std) @ mean  # folded back onto raw features


class TestFitLogistic:
    def test_matches_scipy_optimum(self):
        x, y = _blobs(0, 400)
        xt, yt = _blobs(1, 2000)
        l2, tol = 1e-3, 1e-6
        fit = fit_logistic(torch.tensor(x, dtype=torch.float32), torch.tensor(y), C, l2=l2, tol=tol)
        assert fit.converged and fit.grad_norm <= tol and fit.iterations > 1
        # the features the probe saw are float32; give the reference the same values
        ref_loss, ref_w, ref_b = _reference_logistic(x.astype(np.float32).astype(np.float64), y, C, l2)
        assert abs(fit.loss - ref_loss) <= 1e-6 * ref_loss
        ours = predict(fit, torch.tensor(xt, dtype=torch.float32))
        ref = torch.tensor(xt.astype(np.float32).astype(np.float64) @ ref_w.T + ref_b)
        (top1,) = accuracy(ours, torch.tensor(yt), (1,))
        (ref_top1,) = accuracy(ref, torch.tensor(yt), (1,))
        assert 30 < ref_top1 < 95  # overlapping classes: the test is not trivially saturated
        assert abs(top1 - ref_top1) <= 1.0
        assert (ours.argmax(1) == ref.argmax(1)).double().mean() > 0.99

    def test_reports_the_objective_it_reached(self):
        x, y = _blobs(0, 300, d=16)
        fit = fit_logistic(torch.tensor(x), torch.tensor(y), C, l2=1e-2)
        z = (x - x.mean(0)) / x.std(0)
        logits = z @ fit.weight.numpy().T + fit.bias.numpy()
        value = np.mean(scipy.special.logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])
        value += 0.5 * 1e-2 * np.sum(fit.weight.numpy() ** 2)
        assert fit.loss == pytest.approx(value, rel=1e-12)

    def test_not_converged_when_max_iter_is_too_small(self):
        x, y = _blobs(0, 400)
        fit = fit_logistic(torch.tensor(x), torch.tensor(y), C, l2=1e-4, max_iter=3, tol=1e-6)
        assert not fit.converged
        assert fit.iterations <= 3 and fit.grad_norm > 1e-6

    def test_fits_under_an_outer_no_grad(self):  # the training loop's evaluation runs under torch.no_grad()
        x, y = _blobs(0, 200, d=16)
        with torch.no_grad():
            fit = fit_logistic(torch.tensor(x), torch.tensor(y), C, l2=1e-2)
        assert fit.converged


def test_accuracy_caps_k_and_breaks_ties_towards_the_lower_class():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert accuracy(scores, torch.tensor([0, 2]), (1, 5)) == (50.0, 100.0)
    assert accuracy(scores, torch.tensor([1, 1]), (1, 2)) == (50.0, 100.0)


class TestSelectL2:
    @staticmethod
    def _noisy(seed: int = 0, n: int = 60, d: int = 200, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Few samples, many dimensions, signal in `c` of them only: needs strong regularisation."""
        rng = np.random.default_rng(seed)
        y = np.arange(n) % c
        means = np.zeros((c, d))
        means[:, :c] = 1.5 * np.eye(c)
        return torch.tensor(means[y] + rng.normal(size=(n, d)), dtype=torch.float32), torch.tensor(y)

    @staticmethod
    def _clean(seed: int = 0, n: int = 400, d: int = 8, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Many samples, few dimensions, correlated noise: the nearest-centroid rule strong l2 tends to is poor."""
        rng = np.random.default_rng(seed)
        y = np.arange(n) % c
        x = rng.normal(size=(c, d))[y] * 1.5 + rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)

    def test_stronger_l2_on_a_noisy_high_dimensional_problem(self):
        noisy_l2, noisy_cv = select_l2(*self._noisy(), num_classes=4)
        clean_l2, clean_cv = select_l2(*self._clean(), num_classes=4)
        assert noisy_l2 >= 100 * clean_l2
        assert noisy_cv[noisy_l2] == max(noisy_cv.values()) > noisy_cv[1e-6] + 5
        assert clean_cv[clean_l2] == max(clean_cv.values()) > clean_cv[1e1] + 5

    def test_never_looks_at_the_test_set(self):
        x, y = _blobs(0, 200, d=16)
        xt, yt = _blobs(1, 300, d=16)
        train_x, test_x = torch.tensor(x, dtype=torch.float32), torch.tensor(xt, dtype=torch.float32)
        train_y = torch.tensor(y)
        grid = (1e-4, 1e-2, 1e0)
        honest = linear_probe(train_x, train_y, test_x, torch.tensor(yt), C, grid=grid)
        shuffled = torch.tensor(np.random.default_rng(0).permutation(yt))
        permuted = linear_probe(train_x, train_y, test_x, shuffled, C, grid=grid)
        assert permuted["l2"] == honest["l2"] and permuted["cv_top1"] == honest["cv_top1"]
        assert permuted["final_loss"] == honest["final_loss"]
        assert permuted["top1"] < honest["top1"] - 10  # the permutation did reach the test accuracy
        assert honest["converged"] and set(honest["cv_top1"]) == set(grid)


def _brute_force_knn(train_x, train_y, test_x, test_y, num_classes, k, temperature):
    """Explicit loops: per test sample, neighbours sorted by (-similarity, index), votes summed in that order, classes
    ranked by (-votes, class). Returns (votes [M][C], top1 %, top5 %)."""

    def unit(v):
        norm = math.sqrt(sum(a * a for a in v))
        return [a / norm for a in v]

    train = [unit(v) for v in train_x.tolist()]
    labels = train_y.tolist()
    all_votes, top1, top5 = [], 0, 0
    for q, target in zip(test_x.tolist(), test_y.tolist()):
        q = unit(q)
        sims = [sum(a * b for a, b in zip(q, t)) for t in train]
        order = sorted(range(len(train)), key=lambda j: (-sims[j], j))[:k]
        votes = [0.0] * num_classes
        for j in order:
            votes[labels[j]] += math.exp(sims[j] / temperature)
        ranking = sorted(range(num_classes), key=lambda c: (-votes[c], c))
        top1 += ranking[0] == target
        top5 += target in ranking[: min(5, k)]
        all_votes.append(votes)
    return all_votes, 100.0 * top1 / len(test_y), 100.0 * top5 / len(test_y)


def _knn_data(kind: str):
    gen = torch.Generator().manual_seed(0)
    if kind == "gaussian":
        train_x, test_x = torch.randn(150, 24, generator=gen), torch.randn(40, 24, generator=gen)
        train_y = torch.randint(0, C, (150,), generator=gen)
        train_x += train_y[:, None].float().mul(0.3).sin()  # some class signal
    else:  # many exact ties: +-1 vectors (cosines are exact multiples of 1/16), drawn from a small pool
        pool = torch.randint(0, 2, (6, 16), generator=gen).float() * 2 - 1
        train_x = pool[torch.randint(0, 6, (150,), generator=gen)]
        test_x = torch.cat([pool, torch.randint(0, 2, (34, 16), generator=gen).float() * 2 - 1])
        train_y = torch.randint(0, C, (150,), generator=gen)
    test_y = torch.randint(0, C, (len(test_x),), generator=gen)
    return train_x, train_y, test_x, test_y


@pytest.mark.parametrize("kind", ["gaussian", "ties"])
def test_knn_matches_brute_force_and_chunking_is_invisible(kind):
    train_x, train_y, test_x, test_y = _knn_data(kind)
    k, temperature = 20, 0.07
    ref_votes, ref_top1, ref_top5 = _brute_force_knn(train_x, train_y, test_x, test_y, C, k, temperature)
    if kind == "ties":  # the k-th neighbour is tied with the (k+1)-th for most test samples: the rule is exercised
        sims = torch.nn.functional.normalize(test_x, dim=1) @ torch.nn.functional.normalize(train_x, dim=1).T
        ranked = sims.sort(dim=1, descending=True).values
        assert (ranked[:, k - 1] == ranked[:, k]).float().mean() > 0.5
    for chunk in (1, 7, 10_000):
        votes = knn_votes(train_x, train_y, test_x, C, k=k, temperature=temperature, chunk=chunk)
        torch.testing.assert_close(votes, torch.tensor(ref_votes, dtype=torch.float64), rtol=1e-5, atol=0.0)
        result = knn_classify(train_x, train_y, test_x, test_y, C, k=k, temperature=temperature, chunk=chunk)
        assert result == pytest.approx({"top1": ref_top1, "top5": ref_top5}, abs=1e-9)


def test_knn_tied_neighbours_are_the_lowest_indices():
    # four identical training features, two per label; k=2 must take indices 0 and 1 (label 1), not 2 and 3 (label 0)
    train_x = torch.ones(4, 3)
    train_y = torch.tensor([1, 1, 0, 0])
    votes = knn_votes(train_x, train_y, torch.ones(1, 3), num_classes=2, k=2)
    assert votes[0, 0] == 0 and votes[0, 1] == pytest.approx(2 * math.exp(1 / 0.07))


def test_extract_features_matches_one_big_batch():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(23, 1, 4, 4, generator=gen)
    dataset = [(img, i % 3) for i, img in enumerate(images)]
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()
    calls = []
    feats, labels = extract_features(net, dataset, batch_size=5, device="cpu", progress=lambda *a: calls.append(a))
    torch.testing.assert_close(feats, net(images).detach())
    assert feats.dtype == torch.float32 and labels.dtype == torch.long
    assert labels.tolist() == [i % 3 for i in range(23)]
    assert calls == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
    bf16, _ = extract_features(net, dataset, batch_size=5, device="cpu", amp_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, feats, atol=0.05, rtol=0.05)
