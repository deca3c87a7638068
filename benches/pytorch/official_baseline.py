#!/usr/bin/env python3
"""Measure the official PyTorch RevSNN code: memory per image and images/s of one training step.

This is the bar the revsnn CUDA backend has to beat (more images/s and less memory per image on the
same card and batch). It imports the model files of the official repository `mi804/RevSNN` (commit
7521f75) from a checkout given by --official (never committed here) and times one full training
step exactly as the official training loops run it:

    optimizer.zero_grad(); loss = CE(model(x), y); loss.backward(); optimizer.step();
    functional.reset_net(model)

* ResNets (RevSResNet, MS-ResNet): SGD(lr 0.1, momentum 0.9, weight decay 1e-4), cuDNN
  deterministic and benchmark off, as cifar100/train_resnet_origin.py sets them.
* Transformers (RevSFormer, Spikingformer): AdamW(lr 5e-4, weight decay 0.06), cuDNN benchmark on,
  as cifar100/train.py sets it (timm's loop; the loss here is plain cross-entropy, mixup changes
  neither memory nor time measurably).
* fp32, no AMP (the CIFAR runs), T = 4, CIFAR-100 heads, neurons with backend='cupy' (SpikingJelly
  0.0.0.0.12's fused kernels, what the official code runs), 32x32 random inputs.
* --amp: the official DVS recipe's mixed precision instead (cifar10-dvs/train_resnet.py L226-239,
  train.sh `--amp`): forward and loss under `autocast` (fp16), `GradScaler` for the backward and
  the step, and `enable_amp=True` for the models that take it, so that the reversible blocks
  recompute under autocast too.
* DVS presets (revsresnet24, msresnet20, revsformer-2-256, spikingformer-2-256): the model files of
  cifar10-dvs/ from --official-dvs, T = 10, 10 classes, [B, T, 2, 128, 128] inputs; ResNets with
  SGD and no weight decay (train.sh `--weight-decay 0.`), transformers with AdamW(lr 1e-3,
  weight decay 0.06), as cifar10-dvs/train.py's defaults.
* FLOPs: one extra step under a dispatch mode with torch's FLOP formulas
  (torch.utils.flop_counter) counts the matmul and convolution FLOPs of forward, recompute and
  backward as this code runs them (`flops_per_image`), from which the card's utilisation follows.
* TF32: PyTorch's defaults, TF32 tensor cores for cuDNN's convolutions and not for matmuls
  (`torch.backends.cuda.matmul.allow_tf32 = False`); `--tf32-matmul` puts matmuls (linear layers,
  attention) on TF32 too, the scope of revsnn's `--precision tf32`, for a like-for-like f32 run.
  The output's `environment` records which (`tf32_matmul`). Under --amp the matmuls run in fp16
  either way.
* `zero_grad()` keeps the gradient tensors (set_to_none=False), which is what torch 1.10 (the
  official environment) does.

Memory follows docs/memory.md §9.3: peak of torch.cuda.max_memory_allocated over a training step after
warm-up (parameters, gradients, optimizer state, input and every activation), at two batch sizes;
memory per image is the slope between them and also peak / B at the larger B.

Output: one JSON object per (model, batch) on stdout and in --out (a JSON list), and a markdown
table in --markdown.
"""
import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn as nn

MIB = 2 ** 20

# preset name -> (dataset family, model file, constructor (module, amp) -> model, family); the
# reversible models and the transformers take `enable_amp`, MS-ResNet does not
PRESETS = {
    "revsresnet21": ("cifar", "revs_resnet", lambda m, a: m.revs_resnet21(T=4, enable_amp=a), "resnet"),
    "revsresnet37": ("cifar", "revs_resnet", lambda m, a: m.revs_resnet37(T=4, enable_amp=a), "resnet"),
    "revsresnet109": ("cifar", "revs_resnet", lambda m, a: m.revs_resnet109(T=4, enable_amp=a), "resnet"),
    "msresnet18": ("cifar", "ms_resnet", lambda m, a: m.ms_resnet18(T=4), "resnet"),
    "msresnet34": ("cifar", "ms_resnet", lambda m, a: m.ms_resnet34(T=4), "resnet"),
    "msresnet104": ("cifar", "ms_resnet", lambda m, a: m.ms_resnet104(T=4), "resnet"),
    "revsformer-2-384": ("cifar", "revmodel", lambda m, a: _former(m.rev_vit_snn, 2, a), "transformer"),
    "revsformer-4-384": ("cifar", "revmodel", lambda m, a: _former(m.rev_vit_snn, 4, a), "transformer"),
    "spikingformer-2-384": ("cifar", "model", lambda m, a: _former(m.vit_snn, 2, a), "transformer"),
    "spikingformer-4-384": ("cifar", "model", lambda m, a: _former(m.vit_snn, 4, a), "transformer"),
    # cifar10-dvs/: the registered factories, as train.py and train_resnet.py build them
    "revsresnet24": ("dvs", "revs_resnet", lambda m, a: m.revs_resnet24(T=DVS_T, enable_amp=a, num_classes=10), "resnet"),
    "msresnet20": ("dvs", "ms_resnet", lambda m, a: m.ms_resnet20(T=DVS_T, num_classes=10), "resnet"),
    "revsformer-2-256": ("dvs", "revmodel", lambda m, a: m.RevSpikingformer(T=DVS_T, enable_amp=a), "transformer"),
    "spikingformer-2-256": ("dvs", "model", lambda m, a: m.Spikingformer(T=DVS_T, enable_amp=a), "transformer"),
}

# The DVS presets' time steps (train.sh's shorter setting) and input: [B, T, 2, 128, 128].
DVS_T = 10
DVS_INPUT = (DVS_T, 2, 128, 128)

# The official model files, which import each other by these names: a second folder's files
# replace the first's.
OFFICIAL_MODULES = ("revs_resnet", "ms_resnet", "revmodel", "model", "revtorch", "utils")


def _former(cls, depth, amp):
    # cifar100/configs/*_384.yml: dim 384, 8 heads, mlp ratio 4, patch 4; T defaults to 4.
    return cls(img_size_h=32, img_size_w=32, patch_size=4, embed_dims=384, num_heads=8,
               mlp_ratios=4, in_channels=3, num_classes=100, qkv_bias=False, depths=depth,
               sr_ratios=1, enable_amp=amp)


def import_official(folder, name):
    folder = os.path.abspath(folder)
    loaded = sys.modules.get(name)
    if loaded is not None and os.path.dirname(os.path.abspath(loaded.__file__)) != folder:
        for key in OFFICIAL_MODULES:
            sys.modules.pop(key, None)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    try:
        return __import__(name)
    except ImportError:
        # The installed timm may lack the 0.6-era module paths the official code imports:
        # retry with timm 0.6.12 when gpu/check.sh unpacked it.
        fallback = os.environ.get("TIMM_FALLBACK")
        if not fallback:
            raise
        for key in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
            del sys.modules[key]
        sys.path.insert(0, fallback)
        return __import__(name)


def use_neuron_backend(model, backend):
    for module in model.modules():
        if hasattr(module, "backend") and hasattr(module, "v_threshold"):
            module.backend = backend


def count_flops(step, reset):
    """The matmul and convolution FLOPs of one call of `step` (forward, recompute and backward),
    by torch's own FLOP formulas (torch.utils.flop_counter), or None where this torch lacks them
    or the count failed (the step's timing must not be lost to it; `reset` clears what a failed
    step left in the model). FlopCounterMode itself cannot be used: its module tracker asserts on
    the reversible blocks, whose forward runs without autograd."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        class Counter(TorchDispatchMode):
            total = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    self.total += formula(*args, **kwargs, out_val=out)
                return out

        with Counter() as counter:
            step()
        return counter.total
    except Exception:  # noqa: BLE001 - any failure only costs the FLOP figure
        traceback.print_exc()
        reset()
        return None


def measure(preset, batch, steps, warmup, folders, neuron_backend, device_name="cuda", amp=False):
    from spikingjelly.clock_driven import functional

    dataset, module_name, build, family = PRESETS[preset]
    if folders.get(dataset) is None:
        raise ValueError(f"{preset} needs the official {dataset} model files: pass --official-{dataset}")
    module = import_official(folders[dataset], module_name)
    torch.manual_seed(0)
    device = torch.device(device_name)
    on_gpu = device_name == "cuda"
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    torch.backends.cudnn.deterministic = family == "resnet"
    torch.backends.cudnn.benchmark = family == "transformer"
    model = build(module, amp).to(device)
    model.train()
    use_neuron_backend(model, neuron_backend)
    parameters = sum(p.numel() for p in model.parameters())
    dvs = dataset == "dvs"
    if family == "resnet":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                    weight_decay=0.0 if dvs else 1e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3 if dvs else 5e-4, weight_decay=0.06)
    criterion = nn.CrossEntropyLoss()
    if dvs:
        images = torch.rand(batch, *DVS_INPUT, device=device)
        labels = torch.randint(0, 10, (batch,), device=device)
    else:
        images = torch.randn(batch, 3, 32, 32, device=device)
        labels = torch.randint(0, 100, (batch,), device=device)
    scaler = None
    if amp:  # torch.amp.GradScaler from torch 2.3 on, torch.cuda.amp's before
        scaler = torch.amp.GradScaler(device_name) if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()

    def step():
        optimizer.zero_grad(set_to_none=False)
        with torch.autocast(device_name, dtype=torch.float16, enabled=amp):
            loss = criterion(model(images), labels)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        functional.reset_net(model)
        return loss

    for _ in range(warmup):
        step()
    flops = count_flops(step, lambda: functional.reset_net(model))
    synchronize()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        synchronize()
        start = time.perf_counter()
        loss = step()
        synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if on_gpu else None
    median = statistics.median(times)
    result = {
        "model": preset,
        "batch": batch,
        "time_steps": DVS_T if dvs else 4,
        "precision": "amp-fp16" if amp else "f32",
        "flops_per_image": None if flops is None else flops / batch,
        "parameters": parameters,
        "neuron_backend": neuron_backend,
        "peak_bytes": peak,
        "median_step_seconds": median,
        "images_per_second": batch / median,
        "steps": steps,
        "final_loss": float(loss),
    }
    del model, optimizer, images, labels, loss
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return result


def copy_bandwidth():
    """Device-to-device copy bandwidth (bytes read + written per second), the bar for the
    memory-bound neuron kernels."""
    src = torch.empty(2 ** 28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True,
                        help="folder holding the official cifar100/*.py model files")
    parser.add_argument("--official-dvs",
                        help="folder holding the official cifar10-dvs/*.py model files (DVS presets)")
    parser.add_argument("--amp", action="store_true",
                        help="autocast fp16 + GradScaler, enable_amp=True: the official DVS recipe")
    parser.add_argument("--tf32-matmul", action="store_true",
                        help="TF32 for matmuls too (PyTorch's default: convolutions only), the "
                             "scope of revsnn's --precision tf32")
    parser.add_argument("--models", default="revsresnet37,msresnet34,revsformer-4-384,spikingformer-4-384")
    parser.add_argument("--batches", default="32,64")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--neuron-backend", default="cupy", choices=["cupy", "torch"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: time the step on the CPU (torch neurons, no memory figures), "
                             "the bar for revsnn's CPU training step")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--out", help="write every result as a JSON list here")
    parser.add_argument("--markdown", help="write the summary table here")
    args = parser.parse_args()
    folders = {"cifar": args.official, "dvs": args.official_dvs}
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        measure_on_cpu(args, folders)
        return
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this baseline measures GPU memory and speed (or pass --device cpu)")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32_matmul

    batches = [int(b) for b in args.batches.split(",")]
    header = {
        "card": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "copy_bandwidth_bytes_per_second": copy_bandwidth(),
        "tf32_convolutions": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    print(json.dumps(header), flush=True)
    results = []
    for preset in args.models.split(","):
        for batch in batches:
            result = None
            backends = [args.neuron_backend] + (["torch"] if args.neuron_backend == "cupy" else [])
            for backend in backends:
                try:
                    result = measure(preset, batch, args.steps, args.warmup, folders, backend,
                                     amp=args.amp)
                    break
                except Exception as error:  # one failing preset must not lose the others
                    traceback.print_exc()
                    result = {"model": preset, "batch": batch, "error": f"{backend}: {error!r}"}
                    gc.collect()
                    torch.cuda.empty_cache()
            print(json.dumps(result), flush=True)
            results.append(result)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"environment": header, "results": results}, f, indent=1)

    lines = [
        f"Card: {header['card']}, torch {header['torch']} (CUDA {header['cuda']}), "
        f"copy bandwidth {header['copy_bandwidth_bytes_per_second'] / 1e12:.2f} TB/s; TF32 on "
        f"{'convolutions and matmuls' if header['tf32_matmul'] else 'convolutions only'}",
        "",
        "| model | precision | params | neurons | B | peak MiB | MiB/img (peak/B) | MiB/img (slope) | step ms (median) | images/s | GFLOP/image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in args.models.split(","):
        rows = [r for r in results if r["model"] == preset and "error" not in r]
        slope = None
        if len(rows) >= 2:
            lo, hi = rows[0], rows[-1]
            slope = (hi["peak_bytes"] - lo["peak_bytes"]) / (hi["batch"] - lo["batch"]) / MIB
        for r in rows:
            gflop = "" if r["flops_per_image"] is None else f"{r['flops_per_image'] / 1e9:.1f}"
            lines.append(
                f"| {preset} | {r['precision']} | {r['parameters'] / 1e6:.2f}M | {r['neuron_backend']} | {r['batch']} "
                f"| {r['peak_bytes'] / MIB:.0f} "
                f"| {r['peak_bytes'] / r['batch'] / MIB:.1f} | {'' if slope is None else f'{slope:.1f}'} "
                f"| {r['median_step_seconds'] * 1e3:.1f} | {r['images_per_second']:.0f} | {gflop} |")
        for r in results:
            if r["model"] == preset and "error" in r:
                lines.append(f"| {preset} | | | | {r['batch']} | failed: {r['error'][:80]} | | | | | |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


def measure_on_cpu(args, folders):
    """Median step time on the CPU with SpikingJelly's torch neurons, one JSON line per run.

    The official files build their neurons with backend='cupy', which SpikingJelly refuses
    without CuPy; on the CPU every multi-step neuron is built with backend='torch' instead (the
    same equations, SpikingJelly's reference implementation).
    """
    from spikingjelly.clock_driven import neuron

    for cls in (neuron.MultiStepIFNode, neuron.MultiStepLIFNode):
        def torch_backend_init(self, *args, _original=cls.__init__, **kwargs):
            kwargs["backend"] = "torch"
            _original(self, *args, **kwargs)
        cls.__init__ = torch_backend_init
    header = {"device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(header), flush=True)
    results = []
    for preset in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            try:
                result = measure(preset, batch, args.steps, args.warmup, folders, "torch", "cpu")
            except Exception as error:  # one failing preset must not lose the others
                traceback.print_exc()
                result = {"model": preset, "batch": batch, "error": repr(error)}
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": header, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
