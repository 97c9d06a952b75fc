"""ADE20k semantic segmentation on the ViT encoders: UperNet with an auxiliary FCN head, as BEiT does.

The paper fine-tunes its encoders on ADE20k with BEiT's `upernet_beit_base_12_512_slide_160k_ade20k` (FACTS §3.4):
four blocks of the ViT (3, 5, 7, 11 for 12 blocks) go through the multi-scale adapter that detection uses
(`model.dense.ViTPyramid`: strides p/4, p/2, p, 2p), then mmseg's `UPerHead` (PPM on the deepest map + FPN, fused
at stride p/4) and, for training only, an `FCNHead` on the third map. Here the heads are transformers'
`UperNetHead` / `UperNetFCNHead`, a port of mmseg's:

    import model
    from model.dense import sync_batchnorm
    from model.segment import upernet

    encoder = model.vit("base", pos_embed="sincos", dynamic_img_size=True)
    segmenter = sync_batchnorm(upernet(encoder, num_classes=150))  # SyncBN before DistributedDataParallel
    loss = segmenter.loss(images, labels)  # CE(main) + 0.4 * CE(aux), 255 ignored
    logits = segmenter.eval()(images)  # [B, 150, H, W]

What follows BEiT / mmseg exactly:
- the adapter (BEiT's `fpn1`..`fpn4`: ConvT-BN-GELU-ConvT, ConvT, identity, max-pool) on the raw residual stream of
  blocks (3, 5, 7, 11), prefix tokens dropped, no final norm;
- UPerHead: pool scales (1, 2, 3, 6), 1x1 laterals, 3x3 FPN convs, 3x3 bottlenecks, conv-BN-ReLU with no conv bias,
  bilinear resizes with align_corners=False; channels 768 (BEiT's base config overrides the 512 of mmseg's base
  `upernet_beit.py`; pass 512 for the mmseg default);
- FCNHead: in_index 2, channels 256, one 3x3 conv, concat_input False;
- Dropout2d(0.1) before both 1x1 classifiers (mmseg's `dropout_ratio=0.1`; transformers' heads have none, so it is
  added here in front of their `classifier`);
- logits resized bilinearly (align_corners=False) to the label size; cross-entropy with ignore_index 255, the
  auxiliary loss weighted 0.4; the auxiliary head is not run at test time;
- the heads' initialisation (mmcv's): conv-BN-ReLU convs kaiming-normal (fan_out, relu), BN weight 1 / bias 0,
  the classifiers normal(std 0.01) / bias 0;
- `group_matcher` puts cls token / position / patch embedding at layer 0, block i at i + 1 and everything else
  (adapter, heads) at the top, as BEiT's `LayerDecayOptimizerConstructor`, for `model.heads.param_groups`.

What is an assumption or differs:
- the cross-entropy is averaged over the non-ignored pixels (PyTorch's and transformers' `ignore_index` mean).
  mmseg 0.x (BEiT's) averages over all pixels with the ignored ones counting 0, a smaller loss by the fraction of
  ignored pixels; it changes the loss scale (an effective lr factor), not the optimum;
- the encoder is this project's `ViT` (sin-cos or learned absolute position embedding), not BEiT's relative
  position bias backbone;
- sliding-window inference (512 crops, stride 341), the data pipeline and the schedule are not in this module.

transformers is imported only here (about 1 s after torch), so `import model` does not pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.upernet.configuration_upernet import UperNetConfig
from transformers.models.upernet.modeling_upernet import UperNetConvModule, UperNetFCNHead, UperNetHead

from model.dense import ViTPyramid, encoder_group_matcher, freeze_unread
from model.method import Method
from model.vit import ViT

__all__ = ["UperNet", "upernet"]


class UperNet(Method):
    """A ViT encoder, the adapter's four maps, UperNet's decode head and an auxiliary FCN head.

    As a method of the training loop (`harness train segment`), `forward(images, labels)` returns the loss and its
    two terms to log; `predict(images)` the decode head's logits.

    `backbone` is a `ViTPyramid` without its FPN (UperNet has its own): `backbone.features(x)` gives the four
    block maps resized by the adapter to strides p/4, p/2, p, 2p.

    Args:
        encoder: the ViT, built with `dynamic_img_size=True`; H and W must be multiples of 2p.
        num_classes: output classes (ADE20k: 150; label 255 is ignored).
        indices: the four blocks, shallow to deep (see `ViTPyramid`).
        channels: UPerHead width (BEiT ViT-B: 768; mmseg's default 512).
        aux_channels: FCN head width (256).
        aux_weight: weight of the auxiliary cross-entropy (0.4).
        pool_scales: PPM output sizes on the deepest map.
        dropout: Dropout2d rate before each classifier (mmseg's 0.1).
    """

    views = "segmentation"
    labelled = True
    takes_encoder = True

    def __init__(
        self,
        encoder: ViT,
        num_classes: int = 150,
        indices: Sequence[int] = (3, 5, 7, 11),
        channels: int = 768,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        freeze_unread(encoder, indices)
        self.backbone = ViTPyramid(encoder, indices=indices, out_channels=None)  # no FPN: UperNet has its own
        in_channels = [encoder.embed_dim] * 4
        config = UperNetConfig(
            num_labels=num_classes,
            hidden_size=channels,
            pool_scales=list(pool_scales),
            auxiliary_channels=aux_channels,
            auxiliary_num_convs=1,
            auxiliary_concat_input=False,
            auxiliary_loss_weight=aux_weight,
        )
        self.decode_head = UperNetHead(config, in_channels=in_channels)
        self.aux_head = UperNetFCNHead(config, in_channels=in_channels, in_index=2, kernel_size=3)
        for head in (self.decode_head, self.aux_head):
            head.classifier = nn.Sequential(nn.Dropout2d(dropout), head.classifier)
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        self._init_heads()

    def _init_heads(self) -> None:
        """mmcv's initialisation of mmseg's heads (transformers leaves it to `PreTrainedModel`, unused here)."""
        for head in (self.decode_head, self.aux_head):
            for m in head.modules():
                if isinstance(m, UperNetConvModule):
                    nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.ones_(m.batch_norm.weight)
                    nn.init.zeros_(m.batch_norm.bias)
            nn.init.normal_(head.classifier[1].weight, std=0.01)
            nn.init.zeros_(head.classifier[1].bias)

    def features(self, x: Tensor) -> list[Tensor]:
        """The adapter's four maps: [B, D, H/s, W/s] for s = p/4, p/2, p, 2p."""
        return self.backbone.features(x)

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """Both heads' logits at the input resolution: {"logits", "aux_logits"}, each [B, K, H, W]."""
        maps = self.features(x)
        size = x.shape[-2:]
        logits = F.interpolate(self.decode_head(maps), size=size, mode="bilinear", align_corners=False)
        aux = F.interpolate(self.aux_head(maps), size=size, mode="bilinear", align_corners=False)
        return {"logits": logits, "aux_logits": aux}

    @property
    def encoder(self) -> ViT:  # a property, not a second registration: the state dict names it once
        return self.backbone.encoder

    def forward(self, x: Tensor, target: Tensor | None = None):
        """With `target` [B, H, W]: (loss, logs) for the training loop, `loss`'s sum and its two terms. Otherwise, in
        train mode `forward_train(x)`, in eval mode the decode head's logits [B, K, H, W] (no auxiliary head)."""
        if target is not None:
            main, aux = self._loss_terms(x, target, ignore_index=255)
            loss = main + self.aux_weight * aux
            return loss, {"loss": loss.detach(), "loss_main": main.detach(), "loss_aux": aux.detach()}
        if self.training:
            return self.forward_train(x)
        logits = self.decode_head(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The decode head's logits at the input resolution, whatever the mode: [B, K, H, W]."""
        logits = self.decode_head(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def loss(self, x: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
        """CE(logits) + aux_weight * CE(aux_logits) against `target` [B, H, W] (long), each a mean over the pixels
        that are not `ignore_index`. Runs both heads whatever the mode."""
        main, aux = self._loss_terms(x, target, ignore_index)
        return main + self.aux_weight * aux

    def _loss_terms(self, x: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
        out = self.forward_train(x)
        main = F.cross_entropy(out["logits"], target, ignore_index=ignore_index)
        aux = F.cross_entropy(out["aux_logits"], target, ignore_index=ignore_index)
        return main, aux

    # ---------------------------------------------------------------------------------------------------------
    # optimiser helpers (model.heads.param_groups)
    def no_weight_decay(self) -> set[str]:
        return {f"backbone.encoder.{n}" for n in self.backbone.encoder.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict:
        """BEiT's layer ids: embeddings 0, block i -> i + 1; unmatched names (adapter, heads, final norm) go last."""
        return encoder_group_matcher("backbone.encoder.", coarse)


def upernet(encoder: ViT, **kwargs) -> UperNet:
    """BEiT's ADE20k UperNet on `encoder` (arguments: `UperNet`'s); wrap it in `model.dense.sync_batchnorm` for DDP,
    which converts the adapter's and both heads' BatchNorms."""
    return UperNet(encoder, **kwargs)
