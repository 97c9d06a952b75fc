"""The dense tasks' jobs (harness/train/dense.py): detection on COCO's layout and segmentation on ADE20k's, end to end,
resumed exactly, on two processes, and learning something on the Fashion-MNIST scenes that stand in for them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from harness.config import ConfigError, compose
from harness.data.ade20k import write_tiny_ade20k
from harness.data.coco import METRICS, write_tiny_coco
from harness.train.loop import train
from tests.helpers import HAVE_FMNIST, needs_data

COMMON = ["model=micro", "loader.workers=0", "log.every=1", "log.progress=none"]
# The smoke profile's stand-ins (harness/conf/profile/smoke.yaml), with a few scenes.
DETECT = [
    "task=detect", "data=coco", "data.name=fashion_mnist", "data.img_size=28", "data.stands_in_for=coco", *COMMON,
    "method.args.num_classes=10", "method.args.min_size=[48,56,64,72,80]", "method.args.max_size=133",
    "data.scenes.train=16", "data.scenes.val=8", "optim.batch_size=4",
]  # fmt: skip
SEGMENT = [
    "task=segment", "data=ade20k", "data.name=fashion_mnist", "data.img_size=28", "data.stands_in_for=ade20k",
    *COMMON, "method.args.num_classes=11", "segment.crop=64", "segment.scale=[64,256]", "segment.test_short_side=64",
    "segment.test_long_side=256", "segment.slide_stride=43", "data.scenes.train=16", "data.scenes.val=8",
    "optim.batch_size=4",
]  # fmt: skip


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir: Path) -> dict[int, dict[str, float]]:
    return {r["it"]: {k: v for k, v in r.items() if k.startswith("loss")} for r in _records(run_dir) if "loss" in r}


# ---------------------------------------------------------------------------------------------------------------
# the recipes
def test_the_recipes_are_the_papers():
    detect = compose(["task=detect", "data=coco", "model=small"])
    assert detect.method.name == "mask_rcnn" and detect.method.args.indices == [3, 5, 7, 11]
    assert detect.optim.epochs == 36 and detect.optim.lr == 1e-4 and detect.optim.batch_size == 16
    assert detect.optim.schedule.milestones == [27, 33] and detect.optim.schedule.warmup_iters == 500
    assert detect.model.args.pos_embed == "sincos" and detect.model.args.dynamic_img_size
    assert detect.method.args.min_size == list(range(480, 801, 32)) and detect.method.args.max_size == 1333
    segment = compose(["task=segment", "data=ade20k", "model=base"])
    assert segment.method.name == "upernet" and segment.method.args.num_classes == 150
    assert segment.optim.lr == 7e-4 and segment.optim.layer_decay == 0.65 and segment.optim.schedule.name == "poly"
    assert round(segment.optim.epochs * 20_210 / 16, -3) == 160_000  # BEiT's 160k iterations
    assert compose(["task=segment", "model=micro"]).method.args.indices == [0, 1, 2, 3]
    deep = compose(["task=detect", "model=base", "model.args.depth=24"])
    assert deep.method.args.indices == [7, 11, 15, 23]  # XCiT's large models
    with pytest.raises(ConfigError, match="reads 4 blocks"):
        compose(["task=detect", "model=micro", "model.args.depth=3"])


def test_a_pretrained_encoder_keeps_the_sincos_table():
    """The paper replaces the absolute position embedding by a sin-cos one (detection): a learned one is not loaded."""
    import model

    learned = model.vit("micro", img_size=28)
    with torch.no_grad():
        learned.pos_embed.normal_()
    sincos = model.vit("micro", img_size=28, pos_embed="sincos", dynamic_img_size=True)
    table = sincos.pos_embed.detach().clone()
    sincos.load_timm_state_dict(learned.timm_state_dict())
    assert torch.equal(sincos.pos_embed, table)
    assert torch.equal(sincos.blocks[0].attn.qkv.weight, learned.blocks[0].attn.qkv.weight)


# ---------------------------------------------------------------------------------------------------------------
# detection
def test_detection_on_cocos_layout(tmp_path):
    """COCO's layout (polygons, a crowd, an image without annotations), a few steps, COCO's six APs in result.json."""
    root = tmp_path / "coco"
    write_tiny_coco(root, "train", images=6)
    write_tiny_coco(root, "val", images=4, seed=1)
    small_heads = ["method.args.min_size=[64]", "method.args.max_size=96", "method.args.num_classes=3"]
    cfg = compose(["task=detect", "data=coco", f"data.root={root}", *COMMON, *small_heads, "optim.max_iters=3",
                   "optim.batch_size=2"])  # fmt: skip
    run = tmp_path / "run"
    result = train(cfg, run)
    assert result["task"] == "detect" and result["iterations"] == 3
    assert set(METRICS) <= set(result) and all(0 <= result[k] <= 100 for k in METRICS)
    assert result["best_box_ap_epoch"] in (1, 1.5)
    assert json.loads((run / "result.json").read_text()) == result
    assert (run / "config.yaml").is_file() and (run / "last.pt").is_file()
    step = _records(run)[0]
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(step)
    assert step["loss"] == pytest.approx(sum(v for k, v in step.items() if k.startswith("loss_")), rel=1e-5)


def test_a_job_says_what_it_reads(tmp_path):
    root = tmp_path / "coco"
    write_tiny_coco(root, "train", images=3)
    write_tiny_coco(root, "val", images=2)
    cfg = compose(["task=detect", "data=coco", f"data.root={root}", *COMMON, "method.args.min_size=[64]"])
    with pytest.raises(ConfigError, match=r"3 categories, the model 80 \(method.args.num_classes\): set it to 3"):
        train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"task=detect reads coco .*data.name=stanford_cars is neither"):
        train(compose(["task=detect", "data=stanford_cars", *COMMON]), tmp_path / "other")
    if HAVE_FMNIST:  # the segmentation stand-in: the background and 10 items
        with pytest.raises(ConfigError, match=r"has 11 classes, the model 150 .*set it to 11"):
            train(compose([*SEGMENT, "method.args.num_classes=150"]), tmp_path / "segment")


@needs_data
def test_detection_resumes_exactly(tmp_path):
    """Stopped after 2 steps and resumed, a detection run logs the losses of one that never stopped: the data order,
    the flips, Mask R-CNN's multi-scale draws and its proposal sampling all come back."""
    overrides = [*DETECT, "optim.max_iters=5"]
    straight, resumed = tmp_path / "detect" / "straight", tmp_path / "detect" / "resumed"
    train(compose(overrides), straight)
    assert train(compose([*overrides, "log.stop_after=2"]), resumed) is None
    assert max(_losses(resumed)) == 2
    train(compose(overrides), resumed)
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for it in (3, 4, 5):
        assert b[it] == pytest.approx(a[it], abs=1e-6), f"iteration {it}"
    first = json.loads((straight / "result.json").read_text())
    again = json.loads((resumed / "result.json").read_text())
    assert {k: first[k] for k in METRICS} == {k: again[k] for k in METRICS}


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from harness.train import distributed
    from harness.train.dense import DenseTrainer

    ctx = distributed.setup("cpu")
    trainer = DenseTrainer(compose([*DETECT, "optim.max_iters=2"]), Path(run_dir), ctx)
    result = trainer.run()
    params = {n: p.detach() for n, p in trainer.net.named_parameters()}
    torch.save({"params": params, "result": result}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@needs_data
def test_detection_on_two_processes(tmp_path):
    """DDP (gloo): the ranks' weights stay identical, the frozen final norm raises no unused-parameter error, and
    every rank gets the metrics of all validation images (gathered on rank 0)."""
    port = 29500 + (os.getpid() + 7) % 1000
    run = tmp_path / "detect" / "ddp"
    mp.spawn(_ddp_worker, args=(2, port, str(run), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
    assert a["result"]["world_size"] == 2 and a["result"]["iterations"] == 2
    assert {k: a["result"][k] for k in METRICS} == {k: b["result"][k] for k in METRICS}


# ---------------------------------------------------------------------------------------------------------------
# segmentation
def test_segmentation_on_ade20ks_layout(tmp_path):
    """ADE20k's layout (150 classes, 0 ignored), a few steps, mIoU and pixel accuracy in result.json."""
    root = write_tiny_ade20k(tmp_path / "ade", images=4, size=(40, 32))
    pipeline = ["segment.crop=32", "segment.scale=[32,128]", "segment.test_short_side=32",
                "segment.test_long_side=128", "segment.slide_stride=16"]  # fmt: skip
    cfg = compose(["task=segment", "data=ade20k", f"data.root={root}", *COMMON, *pipeline, "optim.max_iters=2",
                   "optim.batch_size=2"])  # fmt: skip
    result = train(cfg, tmp_path / "run")
    assert result["task"] == "segment" and result["iterations"] == 2
    assert 0 <= result["miou"] <= 100 and 0 <= result["pixel_acc"] <= 100 and result["best_miou"] == result["miou"]
    step = _records(tmp_path / "run")[0]
    assert step["loss"] == pytest.approx(step["loss_main"] + 0.4 * step["loss_aux"], rel=1e-5)


@needs_data
def test_segmentation_resumes_exactly(tmp_path):
    overrides = [*SEGMENT, "optim.max_iters=4"]
    straight, resumed = tmp_path / "segment" / "straight", tmp_path / "segment" / "resumed"
    train(compose(overrides), straight)
    assert train(compose([*overrides, "log.stop_after=2"]), resumed) is None
    train(compose(overrides), resumed)
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for it in (3, 4):
        assert b[it] == pytest.approx(a[it], abs=1e-6), f"iteration {it}"


# ---------------------------------------------------------------------------------------------------------------
# learning: a few hundred steps on trivial scenes score clearly above the same model untrained
# 32 px scenes of 1-2 large items, 64 training scenes; a quicker schedule than the recipes' (a test, not a protocol).
TRIVIAL = ["data.scenes.size=32", "data.scenes.item_size=[14,28]", "data.scenes.per_scene=[1,2]",
           "data.scenes.train=64", "data.scenes.val=16", "optim.batch_size=8", "optim.schedule.warmup_iters=10",
           "eval.every_epochs=1000", "model.args.drop_path_rate=0.0"]  # fmt: skip


def _trained_and_untrained(overrides: list[str], tmp_path: Path) -> tuple[dict, dict]:
    trained = train(compose(overrides), tmp_path / "trained")
    untrained = train(compose([*overrides, "optim.lr=0.0", "optim.max_iters=1"]), tmp_path / "untrained")
    return trained, untrained


@needs_data
def test_segmentation_learns_the_scenes(tmp_path):
    pipeline = ["segment.crop=32", "segment.scale=[32,128]", "segment.test_short_side=32", "segment.test_long_side=128",
                "segment.slide_stride=21"]  # fmt: skip
    overrides = [*SEGMENT, *TRIVIAL, *pipeline, "optim.lr=1e-3", "optim.epochs=15"]  # 120 steps
    trained, untrained = _trained_and_untrained(overrides, tmp_path / "segment")
    scores = {k: (trained[k], untrained[k]) for k in ("miou", "pixel_acc")}
    assert trained["iterations"] == 120
    assert trained["miou"] > untrained["miou"] + 5, scores
    assert trained["pixel_acc"] > untrained["pixel_acc"] + 20, scores


def test_detection_learns_the_shapes(tmp_path):
    """On COCO's tiny fixture (three shapes in a 96 x 64 image), 100 steps take box and mask AP50 far above the
    untrained model's (measured at 150 steps: 83.0 and 83.0 against 0.6 and 0.5)."""
    root = tmp_path / "coco"
    write_tiny_coco(root, "train", images=33)  # the last has no annotation: 32 training images
    write_tiny_coco(root, "val", images=9, seed=1)
    # Batches of 4, 64 sampled RoIs an image (the recipe: 512), a 64-wide encoder and 48 px short sides: the costs of
    # a step are the stride-1 level of the adapter (patches of 4) and the RoIs.
    overrides = ["task=detect", "data=coco", f"data.root={root}", *COMMON, "method.args.num_classes=3",
                 "method.args.min_size=[48]", "method.args.max_size=72", "method.args.box_batch_size_per_image=64",
                 "model.args.embed_dim=64", "model.args.num_heads=4",
                 "optim.batch_size=4", "optim.lr=5e-4", "optim.clip_grad=1.0", "optim.epochs=12.5",
                 "optim.schedule.milestones=[10]", "optim.schedule.warmup_iters=10", "eval.every_epochs=1000",
                 "model.args.drop_path_rate=0.0"]  # fmt: skip
    trained, untrained = _trained_and_untrained(overrides, tmp_path / "detect")
    scores = {k: (trained[k], untrained[k]) for k in ("box_ap50", "mask_ap50", "box_ap")}
    assert trained["iterations"] == 100
    assert trained["box_ap50"] > untrained["box_ap50"] + 30, scores
    assert trained["mask_ap50"] > untrained["mask_ap50"] + 30, scores
