"""The FLOP model (harness.launch.cost.step_flops) against a hand count and against torch's own FLOP counter.

Convention (the model's and these tests'): a multiply-add is 2 FLOPs and only matmuls and convolutions count; what
trains costs forward + backward = 3 x its forward, what does not (DINO's teacher, a tokenizer, a probe's frozen
encoder) 1 x its forward. `torch.utils.flop_counter.FlopCounterMode` counts the same operations (mm, addmm, bmm,
convolution and their backward), so the two agree to within `TOLERANCE`. Two small known differences: the patch
embedding's backward computes no input gradient (its weight gradient only: 2 x, not 3 x, its forward), and the
counter does not count the CPU's fused attention kernel, so the models are built with timm's plain attention (q @ k,
softmax, @ v), which the counter sees as two bmm.
"""

from __future__ import annotations

import pytest
import timm.layers
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.config import compose
from harness.launch import cost
from harness.launch.cost import block_flops, step_flops
from harness.train.build import build_model
from model.tokenizers import DalleTokenizer

TOLERANCE = 0.01  # relative
BATCH = 4


def test_splitmask_vit_b_against_a_hand_count():
    """SplitMask ViT-B/16 at 224 px, the paper's recipe (50 % blocks, a 2-block decoder, 8192 random-projection
    words), every term written out."""
    cfg = compose(["method=splitmask", "model=base", "data=imagenet"])
    d, patches, vocab = 768, 196, 8192
    a, b = 98, 98  # visible patches of the branches: B is the 50 % mask (98 of 196), A its complement

    def block(n):  # qkv 6nd^2, scores QK^T 2n^2d, weighted values 2n^2d, projection 2nd^2, MLP (ratio 4) 16nd^2
        return 6 * n * d * d + 2 * n * n * d + 2 * n * n * d + 2 * n * d * d + 16 * n * d * d

    embedding = 2 * patches * (16 * 16 * 3) * d  # one patch embedding, shared by the branches
    encoders = 12 * block(a + 1) + 12 * block(b + 1)  # each branch: its visible patches and the class token
    decoder = 2 * 2 * block(patches + 1)  # 2 blocks, once per branch, over the full grid and the class token
    head = 2 * d * vocab * ((patches - a) + (patches - b))  # each branch predicts the words it did not see
    tokenizer = 2 * patches * (16 * 16 * 3) * vocab  # cosines of every patch with every codeword, no gradient
    flops = step_flops(cfg)
    assert flops.trained == embedding + encoders + decoder + head
    assert flops.frozen == tokenizer
    assert flops.total == 3 * (embedding + encoders + decoder + head) + tokenizer
    assert flops.trained / 1e9 == pytest.approx(48.69, abs=0.01) and flops.frozen / 1e9 == pytest.approx(2.47, abs=0.01)
    assert block_flops(99, d) == block(99)


# ---------------------------------------------------------------------------------------------------------------
def _counted(net, batch, backward: bool) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = net(*batch)
        if backward:
            loss.backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / BATCH


def _micro(overrides: list[str]):
    """A micro job's config and model (timm's plain attention, which the counter sees: see the module docstring)."""
    cfg = compose(["model=micro", "data=fashion_mnist", *overrides])
    fused = timm.layers.use_fused_attn()
    timm.layers.set_fused_attn(False)
    try:
        torch.manual_seed(0)
        net = build_model(cfg)
    finally:
        timm.layers.set_fused_attn(fused)
    return cfg, net


def _batch(net):
    g = torch.Generator().manual_seed(0)
    if net.views == "multi_crop":
        sizes = [net.global_crop_size] * net.num_global_crops + [net.local_crop_size] * net.num_local_crops
        return ([torch.randn(BATCH, 1, s, s, generator=g) for s in sizes],)
    images = torch.randn(BATCH, 1, 28, 28, generator=g)
    if net.views == "masked":
        return images, net.sample_masks(BATCH, seed=0)
    return images, torch.randint(0, 10, (BATCH,), generator=g)


JOBS = {
    "supervised": ["task=pretrain", "method=supervised"],
    "splitmask": ["task=pretrain", "method=splitmask"],
    "beit": ["task=pretrain", "method=beit"],
    "dino": ["task=pretrain", "method=dino"],  # 2 global 28 px and 8 local 12 px crops, the teacher on the global
    "classifier": ["task=finetune"],
    "linear": ["task=linear"],  # a frozen encoder (forward only), a linear head that trains
}


@pytest.mark.parametrize("job", list(JOBS))
def test_the_flop_model_counts_what_torch_counts_on_the_micro_models(job):
    cfg, net = _micro(JOBS[job])
    flops, batch = step_flops(cfg), _batch(net)
    forward = _counted(net, batch, backward=False)
    assert forward == pytest.approx(flops.trained + flops.frozen, rel=TOLERANCE)
    step = _counted(net, batch, backward=True)
    assert step == pytest.approx(flops.total, rel=TOLERANCE)
    assert step < flops.total  # the patch embedding's input gradient is the one thing the 3 x convention adds


def test_the_dalle_tokenizer_costs_its_convolutions():
    """The dVAE encoder's count (a narrow one: n_hid 8, 64 words) on a 2 x 2 grid of 16 px patches (a 16 x 16 view)."""
    tok = DalleTokenizer(vocab_size=64, patch_size=16, in_chans=3, allow_random_init=True, n_hid=8)
    counter = FlopCounterMode(display=False)
    with counter:
        tok(torch.randn(2, 3, 32, 32))
    method_args = {"tokenizer": {"name": "dalle", "n_hid": 8}, "vocab_size": 64}
    assert counter.get_total_flops() / 2 == pytest.approx(cost._tokenizer(method_args, {"patch_size": 16}, 32))


def test_gpu_peaks_follow_the_device_name():
    assert cost.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert cost.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert cost.gpu_peak_flops("NVIDIA H200") == 989e12
    assert cost.gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert cost.gpu_peak_flops("NVIDIA GeForce RTX 4090") is None
    assert cost.GPU_PEAKS[cost.GPU_NAME] == cost.GPU_PEAK_FLOPS
