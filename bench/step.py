"""Training-step throughput of the plain ViT (supervised: the reference), SplitMask, BEiT and DINO.

    python -m bench step                                    # CPU: the micro models, batch 128, fp32
    python -m bench step --device cuda --size small base --bf16 --compile    # GPU: ViT-S/16 and ViT-B/16 at 224
    python -m bench step --explain --steps 0                # torch._dynamo: graphs, graph breaks, recompiles only

Each method is the model a pre-training job of that size builds: its config composed as `harness train pretrain`
composes it (task=pretrain, model=SIZE, the size's home dataset, method=NAME, then any `--override`), the model
from `harness.train.build.build_model` and the optimiser from `build_optimizer` (AdamW, fused on CUDA). A step is
the training loop's (harness/train/loop.py): forward under autocast, backward, the method's `after_backward`, the
recipe's gradient clipping, the optimiser step, `after_step` (DINO's EMA teacher). Its batches are made before the
timing, as the loader's workers would make them: random images, masks from the method's own generator (a new draw
per batch), DINO's global and local crops at its sizes, labels for the plain ViT.

Timing: `--warmup` steps (the compilation with `--compile`), then `--repeat` rounds of `--steps` steps, the methods
taking turns in each round so that a shared machine's load falls on all of them alike; a method's step time is the
median of its rounds. `--sequential` (for a GPU of one's own): one method at a time, alone in memory, its row saved
as soon as it is measured.

Per method: img/s; the FLOP model's FLOPs per image of the step (`harness.launch.cost.step_flops`, on the same
config; forward + backward = 3 x forward for what trains, 1 x for what does not); the FLOP rate they make; MFU
against the GPU's dense bf16 peak (`harness.launch.cost.GPU_PEAKS`, with `--bf16`); peak memory (on CUDA: the
model's parameters, buffers and optimiser state plus the largest transient of a step, from the allocator's
statistics; on the CPU: the resident memory that building the method and stepping it add to a fresh process); and
the step time relative to the plain ViT's in the same run beside the FLOP model's ratio.

Targets, judged by the benchmark: on the CPU, each method's step time within 5 % of (FLOP ratio x the plain ViT's
step time); on one H100/H200 at ViT-B/16 with bf16, SplitMask at 45 % MFU and 2,500 img/s or more, BEiT and DINO at
45 % MFU.

`--explain`: for each method, torch._dynamo's graphs and graph breaks of its forward (`torch._dynamo.explain`:
where and why it breaks), then the recompilations over `--explain-steps` steps of `torch.compile` with new masks
and new scheduled values (DINO's teacher temperature) each step, counted with a backend that only counts graphs.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import default_out, machine, table, verdict, write_result

__all__ = ["METHODS", "StepCase", "add_arguments", "build_case", "explain", "run"]

METHODS = ("supervised", "splitmask", "beit", "dino")  # the first is the reference
RATIO_TOLERANCE = 0.05  # CPU target: step-time ratio within 5 % of the FLOP model's
GPU_MFU_TARGET = 0.45  # one H100/H200, ViT-B/16, bf16: SplitMask, BEiT and DINO
GPU_IMG_S_TARGET = {"splitmask": 2500.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="the first is the reference")
    p.add_argument("--size", nargs="+", default=None, help="ViT sizes (default: micro on the CPU, small base on GPU)")
    p.add_argument("--batch", type=int, default=128, help="images per step (DINO: per crop)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per round (0: no timing, e.g. with --explain)")
    p.add_argument("--repeat", type=int, default=10, help="rounds; each method's median round is reported")
    p.add_argument("--warmup", type=int, default=2, help="steps before timing (compilation included)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on CUDA, as the loop's run.amp=auto; --no-bf16: fp32)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile each method, as run.compile=true does")
    p.add_argument("--tf32", action="store_true", help="TF32 for float32 matmuls (the tokenizers' cosines)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="for every method's config")
    p.add_argument("--explain", action="store_true", help="torch._dynamo graph breaks and recompilations")
    p.add_argument("--explain-steps", type=int, default=4, help="steps of the recompilation count")
    p.add_argument("--explain-batch", type=int, default=8, help="batch of the --explain runs")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="one method at a time (alone in memory), its figures saved as it finishes; default: turns",
    )
    p.add_argument("--no-memory", action="store_true", help="CPU: skip the peak-memory processes (one per method)")
    p.add_argument("--out", type=Path, default=None, help="folder of the JSON result (default: see bench --help)")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class StepCase:
    """One method at one size, ready to step."""

    method: str
    size: str
    name: str  # the model registry's name (model.list_models)
    cfg: object  # its composed config
    net: object
    optimizer: object
    batches: list  # inputs of `net(*batch)`, on the device
    flops: float  # FLOP model, per image of a step
    clip: float | None
    forward: object = None  # net, or torch.compile(net)
    times: list[float] = field(default_factory=list)  # seconds per step, one per round
    peak_bytes: float | None = None

    def release(self) -> None:
        """Drop the model, optimiser and batches (the figures stay): the next method gets the memory."""
        self.net = self.optimizer = self.forward = None
        self.batches = []


def config(method: str, size: str, overrides: list[str] = ()):
    """The config a pre-training job of `method` at `size` composes to (what `model.create` composes too)."""
    from harness.config import compose
    from model.registry import HOME_DATA

    data = HOME_DATA.get(size, "imagenet")
    return compose(["task=pretrain", f"model={size}", f"data={data}", f"method={method}", *overrides])


def make_batch(net, batch: int, device, seed: int) -> tuple:
    """Inputs of one step as the data pipeline gives them (`Method.views`)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    enc = net.encoder
    chans, size = enc.in_chans, enc.patch_embed.img_size[0]
    if net.views == "multi_crop":
        sizes = [net.global_crop_size] * net.num_global_crops + [net.local_crop_size] * net.num_local_crops
        return ([torch.randn(batch, chans, s, s, generator=g).to(device) for s in sizes],)
    images = torch.randn(batch, chans, size, size, generator=g).to(device)
    if net.views == "masked":
        return images, net.sample_masks(batch, device, seed=seed)
    return images, torch.randint(0, net.num_classes, (batch,), generator=g).to(device)


def build_case(method: str, size: str, batch: int, device, overrides: list[str] = (), batches: int = 2) -> StepCase:
    """A method's model, optimiser and `batches` different batches (new masks each), as a training job builds them."""
    import torch

    from harness.launch.cost import step_flops
    from harness.train.build import build_model, build_optimizer
    from model.registry import MODELS

    cfg = config(method, size, list(overrides))
    torch.manual_seed(0)
    net = build_model(cfg).to(device).train()
    optimizer = build_optimizer(net, cfg, lr=1e-4, device=device)
    name = next((n for n, (m, s) in MODELS.items() if (m, s) == (method, size)), f"{method}_{size}")
    inputs = [make_batch(net, batch, device, seed=k) for k in range(batches)]
    return StepCase(method, size, name, cfg, net, optimizer, inputs, step_flops(cfg).total, cfg.optim.clip_grad)


def train_step(case: StepCase, batch, amp) -> None:
    """One optimiser step as the training loop takes it (accumulation 1)."""
    import torch

    with amp:
        loss, _ = case.forward(*batch)
    loss.backward()
    case.net.after_backward(epoch=1)  # past DINO's frozen-prototype epoch: the steady state
    if case.clip:
        torch.nn.utils.clip_grad_norm_([p for p in case.net.parameters() if p.requires_grad], case.clip)
    case.optimizer.step()
    case.optimizer.zero_grad(set_to_none=True)
    case.net.after_step()


# ---------------------------------------------------------------------------------------------------------------
# Peak memory: what the model holds (parameters, buffers, optimiser state), plus a step's largest transient.
def _static_bytes(case: StepCase) -> int:
    tensors = [*case.net.parameters(), *case.net.buffers()]
    for state in case.optimizer.state.values():
        tensors += [v for v in state.values() if hasattr(v, "element_size")]
    return sum(t.numel() * t.element_size() for t in tensors)


def _proc_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_peak_child(method: str, size: str, args) -> float | None:
    """Peak resident bytes that building `method` and stepping it add to a fresh process (after its imports): the
    CPU has no allocator statistics, and in this process earlier cases' freed memory would hide a later one's."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "bench", "step", "--memory-child", "--methods", method, "--size", size,
               "--batch", str(args.batch), "--warmup", str(max(1, args.warmup))]  # fmt: skip
    command += [f"--override={o}" for o in args.override]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]
    except (IndexError, ValueError, KeyError):
        return None


def _memory_child(args, out) -> int:
    """`--memory-child`: one case built and stepped here; prints {"peak_bytes": ...}."""
    import json

    import torch

    import harness.train.build  # noqa: F401  (imports and the config composition are not the method's memory)

    config(args.methods[0], args.size[0], args.override)
    base = _proc_status("RssAnon")
    case = build_case(args.methods[0], args.size[0], args.batch, torch.device("cpu"), args.override)
    case.forward = case.net
    for k in range(args.warmup):
        train_step(case, case.batches[k % len(case.batches)], nullcontext())
    # The resident peak less the shared libraries' pages the first steps brought in (they only grow): the peak of
    # anonymous memory, above what the process held before building.
    now = [_proc_status(k) for k in ("VmHWM", "RssFile", "RssShmem")]
    peak = None if base is None or None in now else now[0] - now[1] - now[2] - base
    print(json.dumps({"peak_bytes": peak}), file=out)
    return 0


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_round(case: StepCase, steps: int, amp, device, measure_memory: bool) -> float:
    import torch

    if measure_memory:  # CUDA's allocator: the largest transient above what is allocated between steps
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    _sync(device)
    start = time.perf_counter()
    for k in range(steps):
        train_step(case, case.batches[k % len(case.batches)], amp)
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    if measure_memory:
        case.peak_bytes = _static_bytes(case) + torch.cuda.max_memory_allocated(device) - before
    return seconds


# ---------------------------------------------------------------------------------------------------------------
def peak_flops(device, bf16: bool) -> tuple[str, float | None]:
    """(device name, its dense bf16 peak FLOP/s) for a GPU with `--bf16`; (name, None) otherwise."""
    import torch

    from harness.launch.cost import gpu_peak_flops

    if device.type != "cuda":
        return f"cpu, {torch.get_num_threads()} threads", None
    name = torch.cuda.get_device_name(device)
    return name, gpu_peak_flops(name) if bf16 else None


def measure(cases: list[StepCase], args, device) -> None:
    """Warm up every case, then `repeat` rounds in which the methods take turns."""
    import torch

    amp = torch.autocast(device.type, torch.bfloat16) if args.bf16 else nullcontext()
    for case in cases:
        case.forward = torch.compile(case.net) if args.compile else case.net
        for k in range(args.warmup):
            train_step(case, case.batches[k % len(case.batches)], amp)
        _sync(device)
    for r in range(args.repeat):
        for case in cases:
            first = r == 0 and device.type == "cuda"
            case.times.append(_timed_round(case, args.steps, amp, device, measure_memory=first))


def rows(cases: list[StepCase], args, device) -> list[dict]:
    """One record per case: throughput, FLOP rate, MFU, memory, ratios, targets."""
    _, peak = peak_flops(device, args.bf16)
    ref = cases[0]
    ref_s = statistics.median(ref.times)
    out = []
    for case in cases:
        seconds = statistics.median(case.times)
        img_s = args.batch / seconds
        rate = case.flops * img_s
        # Each round's ratio to the reference's round beside it, their median: the load of a shared machine drifts
        # between rounds more than within one. (--sequential: the medians' ratio.)
        paired = len(case.times) == len(ref.times) and not args.sequential
        rounds = [t / r for t, r in zip(case.times, ref.times)] if paired else [seconds / ref_s]
        step_ratio, flop_ratio = statistics.median(rounds), case.flops / ref.flops
        record = {
            "method": case.method,
            "size": case.size,
            "model": case.name,
            "batch": args.batch,
            "step_s": seconds,
            "step_s_rounds": case.times,
            "img_s": img_s,
            "flops_per_image": case.flops,
            "flops_per_s": rate,
            "mfu": rate / peak if peak else None,
            "peak_memory_bytes": case.peak_bytes,
            "step_ratio": step_ratio,
            "flop_ratio": flop_ratio,
            "targets": {},
        }
        if device.type == "cpu" and case is not ref:
            deviation = step_ratio / flop_ratio - 1
            record["targets"]["ratio_within_5pct"] = {"value": deviation, "ok": abs(deviation) <= RATIO_TOLERANCE}
        if device.type == "cuda" and args.bf16 and case.size == "base" and case.method != "supervised":
            record["targets"]["mfu_45pct"] = {"value": record["mfu"], "ok": (record["mfu"] or 0) >= GPU_MFU_TARGET}
            if case.method in GPU_IMG_S_TARGET:
                wanted = GPU_IMG_S_TARGET[case.method]
                record["targets"]["img_s_2500"] = {"value": img_s, "ok": img_s >= wanted}
        out.append(record)
    return out


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def print_rows(records: list[dict], out) -> None:
    headers = ["method", "model", "batch", "img/s", "ms/step", "GFLOP/img", "TFLOP/s", "MFU", "peak MB"]
    headers += ["step x", "FLOP x", "target"]
    lines = []
    for r in records:
        targets = "; ".join(f"{k} {verdict(t['ok'])}" for k, t in r["targets"].items()) or "-"
        if "ratio_within_5pct" in r["targets"]:
            targets = f"{r['targets']['ratio_within_5pct']['value']:+.1%} {targets}"
        lines.append([
            r["method"], r["model"], r["batch"], f"{r['img_s']:.1f}", f"{1e3 * r['step_s']:.1f}",
            f"{r['flops_per_image'] / 1e9:.3f}", f"{r['flops_per_s'] / 1e12:.3g}",
            "-" if r["mfu"] is None else f"{r['mfu']:.1%}", _mb(r["peak_memory_bytes"]),
            f"{r['step_ratio']:.2f}", f"{r['flop_ratio']:.2f}", targets,
        ])  # fmt: skip
    print(table(headers, lines), file=out, flush=True)


# ---------------------------------------------------------------------------------------------------------------
class _CountingBackend:
    """A torch.compile backend that runs each graph as traced (no inductor) and counts how many were compiled."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def _where(reason) -> str:
    frames = list(reason.user_stack or [])
    if not frames:
        return "?"
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno}"


def explain(case: StepCase, steps: int) -> dict:
    """torch._dynamo's view of a method's forward: graphs, graph breaks (where and why), and the graphs compiled over
    `steps` steps with a new batch (new masks) and new scheduled values each step: anything after the first step's
    is a recompilation."""
    import logging

    import torch
    import torch._dynamo

    torch._logging.set_logs(dynamo=logging.ERROR)  # the breaks are in the table, not as warnings
    torch._dynamo.reset()
    found = torch._dynamo.explain(case.net)(*case.batches[0])
    breaks = [{"where": _where(b), "reason": str(b.reason).strip().splitlines()[0]} for b in found.break_reasons]
    torch._dynamo.reset()
    backend = _CountingBackend()
    compiled = torch.compile(case.net, backend=backend)
    schedules = case.net.schedules()
    after_first = None
    for k in range(steps):
        if schedules:  # a new value every step, as the loop sets them (DINO's teacher temperature per epoch)
            case.net.set_schedule_values(**{n: s.base * (1 + 0.01 * k) for n, s in schedules.items()})
        loss, _ = compiled(*case.batches[k % len(case.batches)])
        loss.backward()
        case.net.zero_grad(set_to_none=True)
        if k == 0:
            after_first = backend.graphs
    torch._dynamo.reset()
    return {
        "method": case.method,
        "size": case.size,
        "graphs": found.graph_count,
        "graph_breaks": found.graph_break_count,
        "breaks": breaks,
        "compiled_first_step": after_first,
        "recompiles": backend.graphs - (after_first or 0),
        "steps": steps,
    }


def print_explain(records: list[dict], out) -> None:
    headers = ["method", "size", "graphs", "breaks", "recompiles", "where (why)"]
    lines = []
    for r in records:
        where = sorted({f"{b['where']} ({b['reason'][:70]})" for b in r["breaks"]})
        lines.append([r["method"], r["size"], r["graphs"], r["graph_breaks"], f"{r['recompiles']} in {r['steps']}",
                      "; ".join(where) or "-"])  # fmt: skip
    print(table(headers, lines), file=out, flush=True)
    if any(b["where"].startswith("mim.py") for r in records for b in r["breaks"]):
        print("mim.py: check_counts, the masks' count check, reads a CPU tensor's value; it is skipped on CUDA",
              file=out)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
def run(args, out) -> int:
    import torch

    if args.memory_child:
        return _memory_child(args, out)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench step: --device cuda, but torch sees no CUDA device", file=out)
        return 2
    if args.bf16 is None:
        args.bf16 = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    sizes = args.size or (["micro"] if device.type == "cpu" else ["small", "base"])
    from model.registry import SIZES

    unknown = [s for s in sizes if s not in SIZES]
    if unknown or min(args.batch, args.repeat, args.warmup + 1) < 1 or args.steps < 0:
        what = f"unknown --size {', '.join(unknown)} (valid: {', '.join(SIZES)})" if unknown else ""
        print(f"bench step: {what or '--batch and --repeat must be >= 1, --steps and --warmup >= 0'}", file=out)
        return 2
    where, peak = peak_flops(device, args.bf16)
    precision = "bf16 autocast" if args.bf16 else "fp32" + (" (TF32 matmuls)" if args.tf32 else "")
    print(f"step: torch {torch.__version__}, {where}, {precision}, compile {args.compile}, batch {args.batch}, "
          f"{args.steps} steps x {args.repeat} rounds" + (f", peak {peak / 1e12:.0f} TFLOP/s" if peak else ""),
          file=out, flush=True)  # fmt: skip
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}

    def save(records: list, explained: list, path: Path | None) -> Path:
        payload = {"machine": machine(args.device), "settings": settings, "rows": records, "explain": explained}
        return write_result(args.out or default_out(), "step", payload, args.command_line, path=path)

    records, explained, path = [], [], None
    for size in sizes:
        batches = max(2, args.explain_steps) if args.explain else 2
        if args.steps > 0:
            if args.sequential:  # one method at a time, saved as it finishes (a time limit keeps what ran)
                cases = []
                for method in args.methods:
                    cases.append(build_case(method, size, args.batch, device, args.override))
                    if device.type == "cpu" and not args.no_memory:
                        cases[-1].peak_bytes = cpu_peak_child(method, size, args)
                    measure(cases[-1:], args, device)
                    cases[-1].release()
                    if args.compile:
                        torch._dynamo.reset()  # its caches hold the compiled model's parameters
                    if device.type == "cuda":
                        gc.collect()
                        torch.cuda.empty_cache()
                    last = rows(cases, args, device)[-1]
                    print(f"  {method} {size}: {last['img_s']:.1f} img/s", file=out, flush=True)
                    path = save(records + rows(cases, args, device), explained, path)
            else:  # all built, then rounds in which the methods take turns
                cases = [build_case(m, size, args.batch, device, args.override) for m in args.methods]
                if device.type == "cpu" and not args.no_memory:
                    for case in cases:
                        case.peak_bytes = cpu_peak_child(case.method, size, args)
                measure(cases, args, device)
            size_rows = rows(cases, args, device)
            print(f"\nViT {size}", file=out)
            print_rows(size_rows, out)
            records += size_rows
            del cases
        if args.explain:
            small = [build_case(m, size, args.explain_batch, device, args.override, batches) for m in args.methods]
            size_explained = [explain(c, args.explain_steps) for c in small]
            print(f"\ntorch._dynamo, ViT {size} forward (batch {args.explain_batch}):", file=out)
            print_explain(size_explained, out)
            explained += size_explained
        if device.type == "cuda":
            torch.cuda.empty_cache()
    judged = [t["ok"] for r in records for t in r["targets"].values()]
    path = save(records, explained, path)
    verdicts = f"targets: {sum(judged)} of {len(judged)} met" if judged else "no targets judged"
    print(f"\n{verdicts}; JSON: {path}", file=out)
    return 0
