"""The dense tasks' jobs: COCO detection and instance segmentation (`task=detect`, Mask R-CNN) and ADE20k semantic
segmentation (`task=segment`, UperNet), on the training loop every other job uses.

    harness train detect pretrained=results/pretrain/3f2a... data=coco model=small
    harness train segment data=ade20k model=base optim.epochs=1        # from a random initialisation

Same run folder, same checkpoints and exact resume, same DDP and submitit path as a fine-tuning (`Trainer`); what
differs is here:
- the data: COCO through `harness.data.coco` (the official layout, `CocoDetection`), ADE20k through
  `harness.data.ade20k`; or, for `--profile smoke/micro`, scenes of Fashion-MNIST items in those same layouts
  (`harness.data.scenes`, built once into the cache, `$HARNESS_CACHE/scenes/`, and read by the same readers);
- the pipelines: a flip before Mask R-CNN's own multi-scale resize; BEiT's ratio-range resize, crop, flip and colour
  jitter for UperNet (images with one channel when the encoder has one: the readers give RGB);
- the schedules (`optim.schedule`: mmdet's steps, mmseg's poly) and, under DDP, SyncBatchNorm in the adapter and
  heads;
- the evaluation: COCO box and mask AP (faster-coco-eval, on the main process after gathering every rank's
  detections as RLE) and mIoU / pixel accuracy (torchmetrics, synced across ranks), written to result.json as
  `box_ap` ... `mask_ap75` and `miou`, `pixel_acc`, with the best evaluation beside the last.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.transforms import v2

from harness.config import ConfigError
from harness.io import cache_dir
from harness.train import distributed
from harness.train.build import build_model
from harness.train.loader import SeededTransformDataset, shard_indices
from harness.train.loop import Trainer
from model.dense import sync_batchnorm

__all__ = ["DenseTrainer", "dense_root"]


# A dense task, the dataset it reads, the metric its best evaluation is chosen by, and the metrics it reports.
DATASET = {"detect": "coco", "segment": "ade20k"}
MAIN_METRIC = {"detect": "box_ap", "segment": "miou"}
SCENE_CLASSES = 11  # a segmentation stand-in's classes: the background and the 10 Fashion-MNIST items


def collate_lists(batch: list[tuple]) -> tuple[list, list]:
    """Detection batches: (list of images, list of targets), as Mask R-CNN takes them (sizes differ)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _single(batch: list[tuple]) -> tuple:
    """Segmentation evaluation: one image at a time (each has its own size), unbatched."""
    return batch[0]


def dense_root(cfg: DictConfig) -> Path | None:
    """Where a dense job's data is: the dataset's root (`data.root`, None: the usual resolution), or for a Fashion-MNIST
    stand-in the folder of its scenes, built on first use under `cache_dir() / "scenes"`."""
    kind, d = DATASET[cfg.task], cfg.data
    if d.name == kind:
        return d.root
    if d.name != "fashion_mnist":
        raise ConfigError(
            f"task={cfg.task} reads {kind} (data={kind}), or scenes of Fashion-MNIST items standing in for it "
            f"(--profile smoke/micro: data.name=fashion_mnist); data.name={d.name} is neither"
        )
    from harness.data.scenes import scene_root

    s = d.scenes
    return scene_root(
        kind,
        {"train": s.train, "val": s.val},
        cache_dir() / "scenes",
        size=s.size,
        per_scene=tuple(s.per_scene),
        item_size=tuple(s.item_size),
        seed=s.seed,
        data_root=d.root,
    )


def _channels(cfg: DictConfig) -> list:
    """The readers give RGB: an encoder of one channel (the Fashion-MNIST stand-ins) gets grey images."""
    return [v2.Grayscale(1)] if cfg.data.in_chans == 1 else []


class DenseTrainer(Trainer):
    """`Trainer` with a dense task's model, data, evaluation and results (see the module docstring)."""

    def build_net(self) -> nn.Module:
        """The model; under DDP on GPUs its BatchNorms synced (the batches per GPU are 1-2 images). SyncBatchNorm
        runs on CUDA only: a CPU (gloo) group keeps each rank's BatchNorm statistics, and rank 0 saves its own."""
        net = build_model(self.cfg)
        return sync_batchnorm(net) if self.ctx.world_size > 1 and self.device.type == "cuda" else net

    def build_data(self) -> tuple[Dataset, Dataset]:
        cfg = self.cfg
        root = None
        if self.ctx.is_main:  # the main process builds a stand-in's scenes (once); the others wait, then read them
            root = dense_root(cfg)
        distributed.barrier()
        if not self.ctx.is_main:
            root = dense_root(cfg)
        build = self._detection_data if cfg.task == "detect" else self._segmentation_data
        return build(root)

    def _detection_data(self, root: Path | None) -> tuple[Dataset, Dataset]:
        from harness.data.coco import coco_detection

        cfg = self.cfg
        to_float = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
        # Only the flip: Mask R-CNN's transform does the multi-scale resize (method.args.min_size / max_size).
        train_transform = v2.Compose([v2.ToImage(), v2.RandomHorizontalFlip(cfg.aug.hflip), *_channels(cfg), to_float])
        train = coco_detection(root, "train", train=True)
        evaluation = v2.Compose([v2.ToImage(), *_channels(cfg), to_float])
        self.eval_data = coco_detection(root, "val", transforms=evaluation, train=False)  # every image: COCO's protocol
        categories = len(train.category_to_label)
        if categories != cfg.method.args.num_classes:
            raise ConfigError(
                f"{train!r} has {categories} categories, the model {cfg.method.args.num_classes} "
                f"(method.args.num_classes): set it to {categories}"
            )
        self.collate = collate_lists
        return SeededTransformDataset(train, train_transform, seed=cfg.seed, output="pair"), self.eval_data

    def _segmentation_data(self, root: Path | None) -> tuple[Dataset, Dataset]:
        from harness.data.ade20k import NUM_CLASSES, ade20k_segmentation, train_transforms

        cfg, s = self.cfg, self.cfg.segment
        transform = v2.Compose(
            [
                *_channels(cfg),
                train_transforms(s.crop, tuple(s.scale), tuple(s.ratio), tuple(cfg.data.mean), tuple(cfg.data.std)),
            ]
        )
        classes = NUM_CLASSES if cfg.data.name == "ade20k" else SCENE_CLASSES  # the stand-in: background + 10 items
        if cfg.method.args.num_classes != classes:
            raise ConfigError(
                f"data.name={cfg.data.name} has {classes} classes, the model {cfg.method.args.num_classes} "
                f"(method.args.num_classes): set it to {classes}"
            )
        train = ade20k_segmentation(root, "train")
        evaluation = ade20k_segmentation(root, "val", transforms=v2.Grayscale(1) if cfg.data.in_chans == 1 else None)
        return SeededTransformDataset(train, transform, seed=cfg.seed, output="pair"), evaluation

    # -----------------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        self.net.eval()
        try:
            return self._evaluate_detection() if self.cfg.task == "detect" else self._evaluate_segmentation()
        finally:
            self.net.train()

    def _shard(self, dataset: Dataset) -> Dataset:
        n, ctx = len(dataset), self.ctx
        count = -(-n // ctx.world_size)
        indices = shard_indices(torch.arange(n), ctx.rank, ctx.world_size, count)
        return Subset(dataset, indices.tolist())

    def _autocast(self):
        return torch.autocast(self.device.type, self.amp_dtype) if self.amp_dtype else nullcontext()

    @torch.no_grad()
    def _evaluate_detection(self) -> dict[str, float]:
        """COCO's box and mask AP on every validation image: detections to RLE as they come, gathered on the main
        process, evaluated there (faster-coco-eval), the numbers sent back to every rank."""
        from harness.data.coco import coco_evaluate_results, coco_results

        cfg, data = self.cfg, self.eval_data
        batch = cfg.loader.get("eval_batch_size") or self.d.batch_per_device
        loader = DataLoader(
            self._shard(data), batch_size=batch, num_workers=cfg.loader.workers, collate_fn=collate_lists
        )
        image_ids, boxes, masks = [], [], []
        for images, targets in loader:
            with self._autocast():
                outputs = self.net.predict([image.to(self.device, non_blocking=True) for image in images])
            for target, output in zip(targets, outputs):
                b, m = coco_results(int(target["image_id"]), output, data.label_to_category)
                image_ids.append(int(target["image_id"]))
                boxes += b
                masks += m
        gathered = [(image_ids, boxes, masks)]
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * self.ctx.world_size if self.ctx.is_main else None
            dist.gather_object((image_ids, boxes, masks), gathered, dst=0)
        scores = [None]
        if self.ctx.is_main:
            ids = [i for part in gathered for i in part[0]]
            all_boxes = [r for part in gathered for r in part[1]]
            all_masks = [r for part in gathered for r in part[2]]
            scores = [coco_evaluate_results(data.coco, ids, all_boxes, all_masks)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(scores, src=0)
        return scores[0]

    @torch.no_grad()
    def _evaluate_segmentation(self) -> dict[str, float]:
        """mmseg's single-scale test: short side resized, sliding windows, logits resized back to the label's size,
        argmax; mIoU and pixel accuracy over the whole validation set (torchmetrics syncs the ranks' counts)."""
        from harness.data.ade20k import resize_short_side, segmentation_metrics, slide_inference

        cfg, s = self.cfg, self.cfg.segment
        num_classes = cfg.method.args.num_classes
        metrics = segmentation_metrics(num_classes).to(self.device)
        shard = self._shard(self.eval_set)
        loader = DataLoader(shard, batch_size=1, num_workers=cfg.loader.workers, collate_fn=_single)
        mean, std = list(cfg.data.mean), list(cfg.data.std)
        for image, mask in loader:
            x = resize_short_side(image, s.test_short_side, s.test_long_side).float()[None] / 255
            x = v2.functional.normalize(x, mean, std).to(self.device, non_blocking=True)
            with self._autocast():
                logits = slide_inference(self.net.predict, x, num_classes, s.crop, s.slide_stride, size=mask.shape)
            metrics.update(logits.argmax(1), mask.as_subclass(torch.Tensor)[None].to(self.device))
        return {k: float(v) for k, v in metrics.compute().items()}

    # -----------------------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """The last evaluation's metrics, and the best evaluation by the task's main metric (with its epoch)."""
        if not self.evals:
            return {}
        last, main = self.evals[-1], MAIN_METRIC[self.cfg.task]
        best = max(self.evals, key=lambda e: e[main])
        metrics = {k: v for k, v in last.items() if k != "epoch"}
        return metrics | {"final_epoch": last["epoch"], f"best_{main}": best[main], f"best_{main}_epoch": best["epoch"]}
