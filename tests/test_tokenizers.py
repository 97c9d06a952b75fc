"""Visual-word tokenizers: shapes and ranges, determinism, the cosine assignment, patch order, fitting, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from model.tokenizers import (
    TOKENIZERS,
    DalleTokenizer,
    KMeansTokenizer,
    RandomPatchesTokenizer,
    RandomProjectionTokenizer,
    create_tokenizer,
    patchify,
)

V = 64  # small vocabulary: fast, and still many ids per batch
COSINE = ["random_projection", "random_patches", "kmeans"]
SHAPES = [(1, 28, 4), (3, 32, 4)]  # (channels, image side, patch): grey Fashion-MNIST-like and RGB
DALLE_SMALL = dict(allow_random_init=True, n_hid=64)  # official layout and keys, a quarter of the width


def images(n: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(seed))


def unpatchify(patches: torch.Tensor, c: int, side: int, p: int) -> torch.Tensor:
    """Inverse of `patchify`, written the slow and obvious way: [B, N, p*p*C] -> [B, C, H, W]."""
    b, g = patches.shape[0], side // p
    out = torch.empty(b, c, side, side)
    for i in range(g * g):
        r, col = divmod(i, g)
        out[:, :, r * p : (r + 1) * p, col * p : (col + 1) * p] = patches[:, i].reshape(b, p, p, c).permute(0, 3, 1, 2)
    return out


def build(name: str, c: int, p: int, data: torch.Tensor | None = None, **kwargs):
    if name == "dalle":
        mean, std = ((0.5,), (0.5,)) if c == 1 else (None, None)
        return create_tokenizer(name, 8192, p, c, mean=mean, std=std, **DALLE_SMALL, **kwargs)
    tok = create_tokenizer(name, V, p, c, **kwargs)
    if tok.needs_fit:
        tok.fit(data, num_patches=2000, iters=5, batch_size=256) if name == "kmeans" else tok.fit(data)
    return tok


@pytest.mark.parametrize("c, side, p", SHAPES)
@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_shape_and_range(name, c, side, p):
    x = images(3, c, side)
    tok = build(name, c, p, data=images(16, c, side, seed=1))
    ids = tok(x)
    assert ids.shape == (3, (side // p) ** 2) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.vocab_size
    assert len(ids.unique()) > 1


def test_unknown_name():
    with pytest.raises(ValueError, match="random_projection"):
        create_tokenizer("vqgan")


@pytest.mark.parametrize("name", COSINE)
def test_determinism(name):
    data, x = images(16, 3, 32, seed=1), images(4, 3, 32)
    a, b, other = (build(name, 3, 4, data, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.codebook, b.codebook) and torch.equal(a(x), b(x))
    assert not torch.equal(a.codebook, other.codebook)


def test_dalle_determinism():
    a, b, other = (build("dalle", 3, 4, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.blocks.input.w, b.blocks.input.w) and not torch.equal(a.blocks.input.w, other.blocks.input.w)


@pytest.mark.parametrize("center", [False, True])
def test_random_projection_is_cosine_argmax(center):
    tok = RandomProjectionTokenizer(V, 4, 3, center=center)
    x = images(2, 3, 16)
    ids = tok(x)
    codebook = tok.codebook - tok.codebook.mean(1, keepdim=True) if center else tok.codebook
    for b in range(2):
        for i, patch in enumerate(patchify(x, 4)[b]):
            patch = patch - patch.mean() if center else patch
            assert ids[b, i] == F.cosine_similarity(patch[None], codebook, dim=1).argmax()


def test_codebook_range():
    tok = RandomProjectionTokenizer(V, 4, 1, low=-0.5, high=2.0)
    assert float(tok.codebook.min()) >= -0.5 and float(tok.codebook.max()) <= 2.0


def test_patch_order_matches_vit():
    """One patch set to codebook row k (in image layout), the rest a constant: only that index gets id k."""
    tok = RandomProjectionTokenizer(V, 4, 3)
    background = int(tok(torch.full((1, 3, 4, 4), -1.0))[0, 0])
    k = (background + 1) % V
    for target in (0, 5, 13):
        patches = torch.full((1, 16, 48), -1.0)
        patches[0, target] = tok.codebook[k]
        ids = tok(unpatchify(patches, 3, 16, 4))[0]
        assert ids[target] == k and (ids != background).nonzero().flatten().tolist() == [target]


def test_chunking_does_not_change_ids():
    x = images(4, 3, 32)
    full, tiny = RandomProjectionTokenizer(V, 4, 3), RandomProjectionTokenizer(V, 4, 3, chunk_rows=7)
    assert full.chunk_rows > len(x) * 64
    assert torch.equal(full(x), tiny(x))


def test_random_patches():
    data = images(8, 1, 28)
    tok = RandomPatchesTokenizer(V, 4, 1)
    with pytest.raises(RuntimeError, match="fit"):
        tok(data)
    tok.fit([data[:3], (data[3:], torch.zeros(5))])  # batches, or (images, labels) as a data loader yields
    pool = patchify(data, 4).flatten(0, 1)
    assert all((pool == row).all(1).any() for row in tok.codebook)
    assert len(tok.codebook.unique(dim=0)) == V  # drawn without replacement
    fresh = torch.nn.Sequential(RandomPatchesTokenizer(V, 4, 1))  # as a submodule, the way a method holds it
    fresh.load_state_dict(torch.nn.Sequential(tok).state_dict())
    assert bool(fresh[0].fitted) and torch.equal(fresh(data), tok(data))


def test_random_patches_sample_is_uniform():
    """Position j of image i is patch value i*49+j; over many seeds every (image, position) is drawn alike."""
    data = torch.arange(4 * 49, dtype=torch.float32).view(4, 1, 7, 7)
    counts = torch.zeros(4 * 49)
    for seed in range(200):
        tok = RandomPatchesTokenizer(V, 1, 1, seed=seed)
        tok.fit(data.split(1))  # one image per batch: the reservoir fills, then evicts a few at a time
        counts += torch.bincount(tok.codebook.flatten().long(), minlength=4 * 49)
    expected = 200 * V / (4 * 49)
    assert counts.min() > 0.6 * expected and counts.max() < 1.4 * expected


def test_kmeans_lowers_quantisation_error():
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.randn(12, 48, generator=gen)
    patches = prototypes[torch.randint(12, (64, 64), generator=gen)] + 0.5 * torch.randn(64, 64, 48, generator=gen)
    data = unpatchify(patches, 3, 32, 4)
    initial, fitted = KMeansTokenizer(16, 4, 3), KMeansTokenizer(16, 4, 3)
    initial.fit(data, iters=0)  # the random sampled patches k-means starts from
    fitted.fit(data, iters=30, batch_size=512)
    random = RandomProjectionTokenizer(16, 4, 3)
    err = {t: tok.quantisation_error(patches) for t, tok in [("init", initial), ("fit", fitted), ("rp", random)]}
    assert err["fit"] < 0.5 * err["init"] and err["init"] < 0.7 * err["rp"], err
    assert torch.allclose(fitted.codebook.norm(dim=1), torch.ones(16))


def test_fit_needs_enough_patches():
    with pytest.raises(ValueError, match="fewer"):
        RandomPatchesTokenizer(V, 4, 1).fit(images(1, 1, 28))  # 49 patches < 64


def test_dalle_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dalle_encoder\.safetensors"):
        DalleTokenizer()
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors") as err:
        DalleTokenizer(weights=missing)
    assert "convert_dalle.py" in str(err.value) and "encoder.pkl" in str(err.value)


def test_dalle_official_keys():
    tok = DalleTokenizer(allow_random_init=True, seed=0)
    sd = tok.state_dict()
    assert sd["blocks.input.w"].shape == (256, 3, 7, 7) and sd["blocks.output.conv.w"].shape == (8192, 2048, 1, 1)
    for key in ["blocks.group_1.block_1.res_path.conv_1.w", "blocks.group_2.block_1.id_path.w", "blocks.output.conv.b"]:
        assert key in sd
    assert "blocks.group_1.block_1.id_path.w" not in sd  # identity where the width does not change
    assert len(sd) == 74 and not list(tok.parameters())  # frozen: buffers only, never seen by an optimiser


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_dalle_weights_round_trip(tmp_path, suffix):
    src = build("dalle", 3, 4, seed=3)
    path = tmp_path / f"encoder{suffix}"
    save_file(src.state_dict(), path) if suffix == ".safetensors" else torch.save(src.state_dict(), path)
    tok = DalleTokenizer(patch_size=4, weights=path, n_hid=64)
    x = images(2, 3, 16)  # a 4x4 grid: the dVAE sees 32x32
    assert torch.equal(tok(x), src(x))
    with pytest.raises(ValueError, match="8192"):
        DalleTokenizer(vocab_size=64, weights=path)


def test_float32_under_autocast():
    tok, x = RandomProjectionTokenizer(V, 4, 3), images(2, 3, 32)
    expected = tok(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tok(x), expected)
