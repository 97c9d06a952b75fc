"""Every registered model: forward + backward on a 2-image batch, grey 28x28 and RGB 32x32."""

import pytest
import torch

import model

INPUTS = {"grey28": dict(img_size=28, in_chans=1, patch_size=4), "rgb32": dict(img_size=32, in_chans=3, patch_size=4)}


def _loss(m, name: str, images: torch.Tensor) -> torch.Tensor:
    """Run the model the way the training loop does and return a scalar to differentiate."""
    method = name.split("_vit_")[0] if "_vit_" in name else "vit"
    if method == "vit":
        return m(images).pow(2).mean()
    if method in ("supervised", "classifier", "linear"):
        loss, _ = m(images, torch.tensor([0, 1]))
        return loss
    if method == "dino":
        local = torch.nn.functional.interpolate(images, size=m.local_crop_size, mode="bilinear")
        loss, _ = m([images, images.flip(-1)] + [local] * m.num_local_crops)
        return loss
    loss, _ = m(images)
    return loss


@pytest.mark.parametrize("input_kind", list(INPUTS))
@pytest.mark.parametrize("name", model.list_models())
def test_forward_backward(name, input_kind):
    torch.manual_seed(0)
    kw = dict(INPUTS[input_kind])
    if name.startswith(("beit", "splitmask")):
        kw |= dict(vocab_size=128, min_block=4, max_block=None)  # masks fit the 7x7 / 8x8 grids
    m = model.create(name, **kw)
    images = torch.randn(2, kw["in_chans"], kw["img_size"], kw["img_size"])
    loss = _loss(m, name, images)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable), "a trainable parameter got no gradient"


def test_registry_lists_every_method_and_size():
    names = model.list_models()
    for size in ("micro", "tiny", "small", "base"):
        assert any(n.startswith(f"vit_{size}_p") for n in names)
        for method in ("supervised", "classifier", "linear", "beit", "splitmask", "dino"):
            assert any(n.startswith(f"{method}_vit_{size}_p") for n in names)
    assert model.list_models("splitmask*") == [n for n in names if n.startswith("splitmask")]


def test_unknown_names_and_arguments_are_explained():
    with pytest.raises(ValueError, match=r"valid models: .*splitmask_vit_small_p16"):
        model.create("splitmask_vit_giant_p14")
    with pytest.raises(ValueError, match=r"unknown arguments .*\['temprature'\].*temperature"):
        model.create("splitmask_vit_micro_p4", temprature=0.1)


def test_overrides_are_routed_to_encoder_and_method():
    m = model.create("splitmask_vit_small_p16", drop_path_rate=0.2, temperature=0.1, pos_embed="sincos")
    assert m.temperature == 0.1 and m.encoder.pos_embed_type == "sincos"
    assert m.encoder.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
