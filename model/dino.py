"""DINO (Caron et al. 2021), the self-distillation baseline of the paper (FACTS §3.1, Table 1).

Follows facebookresearch/dino: `DINOHead` is its projection head, `DINO._multi_crop` its `MultiCropWrapper`,
`DINO._loss` its `DINOLoss` (cross-entropy between the centred, sharpened teacher and the student, over every pair
of different views), and `after_step` its EMA teacher update. Where the paper says nothing, the DINO repository's
defaults are used.

The teacher is a deep copy of the student (backbone and head) that never receives gradients and is kept as a
submodule so that checkpoints hold it. DINO evaluates the teacher, so `export_encoder` (what the harness exports for
fine-tuning and probing) is the teacher backbone unless `export_teacher=False`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from model.method import Method, Schedule
from model.vit import ViT

__all__ = ["DINO", "DINOHead"]


class DINOHead(nn.Module):
    """3-layer MLP to a bottleneck, L2 normalisation, then a weight-normalised linear layer to `out_dim` logits.

    With `norm_last_layer` the weight-norm gain is fixed at 1, so the logits are cosines between the normalised
    bottleneck feature and the unit-norm prototypes (DINO's recommended setting for stability).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, o in ((in_dim, hidden_dim), (hidden_dim, hidden_dim)):
            layers += [nn.Linear(i, o), *([nn.BatchNorm1d(o)] if use_bn else []), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # As in DINO, the last layer keeps PyTorch's default init: only its direction matters once g is 1.
        # The parametrization API stores g and v as `parametrizations.weight.original{0,1}`: plain tensors, so the
        # state dict survives deepcopy and `torch.load(weights_only=True)`.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0  # g, [out_dim, 1]
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        """Backbone features [B, in_dim] to logits [B, out_dim]."""
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class DINO(Method):
    """DINO self-distillation with multi-crop; `forward(crops)` returns `(loss, logs)` (see `model/method.py`).

    Crop settings (`num_*_crops`, `*_crop_size`, `*_crops_scale`) are read by the data pipeline, which makes the
    crops; the model only checks that the encoder can take them. `local_crop_size` defaults to DINO's 96/224 of the
    global size, rounded to a whole number of patches (at least one): 96 for 224/16, 12 for the 28/4 micro ViT.
    """

    views = "multi_crop"

    def __init__(
        self,
        encoder: ViT,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        use_bn_in_head: bool = False,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 0,
        center_momentum: float = 0.9,
        momentum_teacher: float = 0.996,
        freeze_last_layer: int = 1,
        num_global_crops: int = 2,
        num_local_crops: int = 8,
        global_crop_size: int | None = None,
        local_crop_size: int | None = None,
        global_crops_scale: tuple[float, float] = (0.4, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.4),
        export_teacher: bool = True,
    ) -> None:
        super().__init__()
        patch, img_size = encoder.patch_size, encoder.patch_embed.img_size[0]
        global_crop_size = global_crop_size or img_size
        if local_crop_size is None:
            local_crop_size = max(1, round(global_crop_size * 96 / 224 / patch)) * patch
        if num_global_crops < 1 or num_global_crops + num_local_crops < 2:
            raise ValueError("DINO needs at least one global crop and two crops in all (a loss needs two views)")
        sizes = {global_crop_size} | ({local_crop_size} if num_local_crops > 0 else set())
        if any(s % patch for s in sizes):
            raise ValueError(f"crop sizes {sorted(sizes)} must be multiples of the patch size {patch}")
        if sizes != {img_size} and not encoder.dynamic_img_size:
            raise ValueError(
                f"crops of size {sorted(sizes)} need an encoder built with dynamic_img_size=True "
                f"(this one only takes {img_size}x{img_size})"
            )
        self.num_global_crops, self.num_local_crops = num_global_crops, num_local_crops
        self.global_crop_size, self.local_crop_size = global_crop_size, local_crop_size
        self.global_crops_scale, self.local_crops_scale = tuple(global_crops_scale), tuple(local_crops_scale)
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.freeze_last_layer, self.export_teacher = freeze_last_layer, export_teacher
        # DINO's teacher temperature is a per-epoch schedule (linear warm-up, then constant); its momentum a
        # per-iteration cosine to 1.
        self._teacher_temp_schedule = Schedule(
            base=teacher_temp,
            final=teacher_temp,
            warmup_epochs=warmup_teacher_temp_epochs,
            warmup_start=warmup_teacher_temp,
            per_epoch=True,
        )
        self._momentum_schedule = Schedule(base=momentum_teacher, final=1.0)
        # First values of the schedules, so that forward works before the loop sets them. The temperature is read in
        # forward, so it is a (non-persistent) 0-dim buffer set in place: a float attribute would make torch.compile
        # specialise on it and compile again when its schedule moves.
        self.register_buffer("_teacher_temp", torch.tensor(0.0, dtype=torch.float64), persistent=False)
        self.teacher_temp = float(warmup_teacher_temp if warmup_teacher_temp_epochs > 0 else teacher_temp)
        self.teacher_momentum = float(momentum_teacher)

        self.encoder = encoder
        self.head = DINOHead(encoder.embed_dim, out_dim, hidden_dim, bottleneck_dim, use_bn_in_head, norm_last_layer)
        # The teacher starts as an exact copy of the student (DINO loads the student's state dict into it).
        self.teacher_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        # DINO builds its teacher without stochastic depth: its targets should not be noisy.
        for m in self.teacher_encoder.modules():
            if isinstance(m, DropPath):
                m.drop_prob = 0.0
        self.register_buffer("center", torch.zeros(1, out_dim))

    @property
    def teacher_temp(self) -> float:
        return float(self._teacher_temp)  # for reading and logging; forward uses the tensor (no host sync)

    @teacher_temp.setter
    def teacher_temp(self, value: float) -> None:
        self._teacher_temp.fill_(value)

    # ---------------------------------------------------------------------------------------------------------
    # contract with the training loop
    def schedules(self) -> dict[str, Schedule]:
        return {"teacher_temp": self._teacher_temp_schedule, "teacher_momentum": self._momentum_schedule}

    @property
    def export_encoder(self) -> ViT:
        """The backbone the harness should export: the teacher (as the DINO repository does) unless
        `export_teacher=False`, then the student `self.encoder`."""
        return self.teacher_encoder if self.export_teacher else self.encoder

    def after_backward(self, epoch: int) -> None:
        """DINO's `cancel_gradients_last_layer`: the prototypes stay fixed during the first epoch(s)."""
        if epoch < self.freeze_last_layer:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA teacher update, teacher <- m * teacher + (1 - m) * student, over all parameters at once.

        Buffers (BatchNorm statistics with `use_bn_in_head`) are not copied: as in DINO, the teacher's BatchNorm
        keeps the statistics of its own forward passes.
        """
        m = self.teacher_momentum
        teacher = [*self.teacher_encoder.parameters(), *self.teacher_head.parameters()]
        student = [p.detach() for p in (*self.encoder.parameters(), *self.head.parameters())]
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, student, alpha=1.0 - m)

    # ---------------------------------------------------------------------------------------------------------
    # forward
    @staticmethod
    def _multi_crop(encoder: ViT, head: nn.Module, crops: Sequence[Tensor]) -> Tensor:
        """DINO's MultiCropWrapper: one backbone pass per run of consecutive same-size crops, one head pass.

        Args:
            crops: V tensors [B, C, H_v, W_v].
        Returns:
            logits [V * B, out_dim], crop-major (crop v is rows v*B:(v+1)*B).
        """
        feats, start = [], 0
        for end in range(1, len(crops) + 1):
            if end == len(crops) or crops[end].shape[-2:] != crops[start].shape[-2:]:
                feats.append(encoder(torch.cat(list(crops[start:end]))))
                start = end
        # The head sees all crops in one batch, as in DINO (this matters for its BatchNorm).
        return head(torch.cat(feats))

    def forward(self, crops: Sequence[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Multi-crop DINO loss.

        Args:
            crops: `num_global_crops` global crops [B, C, Hg, Wg] followed by `num_local_crops` local crops
                [B, C, Hl, Wl].
        Returns:
            the loss (0-dim) and logs: "loss", "teacher_entropy" (mean entropy of the teacher's distributions;
            near log(out_dim) when it collapses to uniform) and "teacher_marginal_entropy" (entropy of their batch
            mean; near 0 when it collapses to one dimension).
        """
        num_global = self.num_global_crops
        if len(crops) != num_global + self.num_local_crops:
            raise ValueError(f"expected {num_global} + {self.num_local_crops} crops, got {len(crops)}")
        batch = crops[0].shape[0]
        student = self._multi_crop(self.encoder, self.head, crops).float()  # [V*B, K]
        with torch.no_grad():
            teacher = self._multi_crop(self.teacher_encoder, self.teacher_head, crops[:num_global]).float()  # [G*B, K]
            # Centring and sharpening; the centre is the one from before this batch, as in DINO.
            probs = F.softmax((teacher - self.center) / self._teacher_temp, dim=-1)
        loss = self._loss(student, probs, batch)
        self._update_center(teacher)
        with torch.no_grad():
            entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
            marginal = probs.mean(0)
            marginal_entropy = -(marginal * torch.log(marginal.clamp_min(1e-12))).sum()
        logs = {"loss": loss.detach(), "teacher_entropy": entropy, "teacher_marginal_entropy": marginal_entropy}
        return loss, logs

    def _loss(self, student: Tensor, teacher_probs: Tensor, batch: int) -> Tensor:
        """DINOLoss: mean over pairs (teacher view g, student view v != g) of the batch-mean cross-entropy.

        Args:
            student: student logits [V*B, K]; teacher_probs: centred, sharpened teacher softmax [G*B, K].
        """
        log_q = F.log_softmax(student / self.student_temp, dim=-1).unflatten(0, (-1, batch))  # [V, B, K]
        p = teacher_probs.unflatten(0, (-1, batch))  # [G, B, K]
        ce = -torch.einsum("gbk,vbk->gv", p, log_q) / batch  # [G, V]: batch-mean CE of every pair
        num_global, num_views = ce.shape
        # Teacher and student on the same view are skipped: global crop g is student view g.
        same = torch.eye(num_global, num_views, dtype=torch.bool, device=ce.device)
        return ce.masked_fill(same, 0.0).sum() / (num_global * num_views - num_global)

    @torch.no_grad()
    def _update_center(self, teacher: Tensor) -> None:
        """centre <- m * centre + (1 - m) * mean of the teacher logits [G*B, K] over all ranks' batches."""
        batch_center = teacher.sum(0, keepdim=True)
        count = teacher.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center / count, alpha=1.0 - self.center_momentum)

    def extra_repr(self) -> str:
        return (
            f"crops={self.num_global_crops}x{self.global_crop_size} + {self.num_local_crops}x{self.local_crop_size}, "
            f"student_temp={self.student_temp}, center_momentum={self.center_momentum}"
        )
