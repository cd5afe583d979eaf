#!/usr/bin/env python3
"""The PyTorch side of `scripts/bench engine` (bench/engine_bench.cpp starts it).

Runs a torchvision model as frozen TorchScript (torch.jit.trace, then torch.jit.freeze) on the
input the C++ side wrote, with the same thread count and the same cpus, and prints one JSON line
per batch on stdout:

  {"side":"pytorch","batch":1,"threads":2,"iters":67,"p50_ms":..,"p99_ms":..,"min_ms":..,
   "mean_ms":..,"other_cpu_pct":..,"ref_absmax":..,"max_abs_diff":..}

max_abs_diff compares PyTorch's output with SliceServe's (--compare DIR/output-B.npy),
ref_absmax is the largest |PyTorch output|, other_cpu_pct the percentage of the machine's CPU
time (all cpus, steal included) that other processes used during the timed runs. With --onnx it first prints the model's FLOPs counted
from the ONNX file with onnx shape inference, as a check on the C++ count:

  {"side":"onnx","gflop_per_image":4.09,"conv":53,"gemm":1}

The model is built the way scripts/export_models.py builds the ONNX file (torch.manual_seed(0),
torchvision.models.NAME(weights=None), eval), so both sides compute the same function.
Progress goes to stderr. Run it with Debian's /usr/bin/python3 and PYTHONNOUSERSITE=1.
"""

import argparse
import json
import os
import sys
import time

WEIGHT_SEED = 0  # scripts/export_models.py


def log(msg):
    print(f"engine_pytorch: {msg}", file=sys.stderr, flush=True)


def parse_runs(text):
    runs = []
    for item in text.split(","):
        batch, iters = item.split(":")
        runs.append((int(batch), int(iters)))
    return runs


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="torchvision model name")
    p.add_argument("--input", required=True,
                   help=".npy float32 [max_batch, C, H, W]; batch B uses the first B items")
    p.add_argument("--runs", required=True, type=parse_runs,
                   help="comma-separated BATCH:ITERATIONS, e.g. 1:20,8:10")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before each batch")
    p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    p.add_argument("--cpus", default="",
                   help="comma-separated cpus for the process (os.sched_setaffinity)")
    p.add_argument("--compare", default="",
                   help="folder with output-B.npy files of the other side to compare with")
    p.add_argument("--onnx", default="", help="count FLOPs from this ONNX file first")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler's per-op table for each batch on stderr")
    return p.parse_args(argv)


def onnx_flops(path):
    """FLOPs per image: Conv 2*N*Cout*Hout*Wout*Cin/group*kh*kw, Gemm 2*M*N*K, at batch 1."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(path)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1  # the symbolic batch
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(
            model.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)

    def attr(node, name, default):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    flops = 0
    counts = {"Conv": 0, "Gemm": 0}
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = shapes[node.input[1]]  # [Cout, Cin/group, kh, kw]
            y = shapes[node.output[0]]  # [N, Cout, Hout, Wout]
            per_output = 1
            for d in w[1:]:
                per_output *= d
            outputs = 1
            for d in y:
                outputs *= d
            flops += 2 * outputs * per_output
            counts["Conv"] += 1
        elif node.op_type == "Gemm":
            a = shapes[node.input[0]]
            b = shapes[node.input[1]]
            m, k = (a[1], a[0]) if attr(node, "transA", 0) else (a[0], a[1])
            n = b[0] if attr(node, "transB", 0) else b[1]
            flops += 2 * m * n * k
            counts["Gemm"] += 1
    return flops, counts


def cpu_sample():
    """(machine busy s, machine total s, this process's CPU s): see engine_bench.cpp."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    busy = (user + nice + system + irq + softirq + steal) * tick
    t = os.times()
    return busy, busy + (idle + iowait) * tick, t.user + t.system


def other_cpu_pct(a, b):
    """Percent of the machine's CPU time between two samples that was not this process's."""
    total = b[1] - a[1]
    if total <= 0:
        return None
    return min(100.0, max(0.0, 100.0 * ((b[0] - a[0]) - (b[2] - a[2])) / total))


def percentile(sorted_ms, percent):
    """Nearest rank, as the C++ side computes it."""
    rank = max(1, min(len(sorted_ms), -(-len(sorted_ms) * percent // 100)))
    return sorted_ms[rank - 1]


def main(argv):
    args = parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, [int(c) for c in args.cpus.split(",")])
    try:
        import numpy as np
        import torch
        import torchvision
    except ImportError as e:
        log(f"{e}; run scripts/install-deps (Debian's python3-torch, python3-torchvision)")
        return 3

    if args.onnx:
        try:
            flops, counts = onnx_flops(args.onnx)
        except ImportError as e:
            log(f"{e}: cannot count FLOPs from the ONNX file (python3-onnx)")
        else:
            print(json.dumps({"side": "onnx", "gflop_per_image": flops / 1e9,
                              "conv": counts["Conv"], "gemm": counts["Gemm"]}), flush=True)

    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} threads, cpus "
        f"{sorted(os.sched_getaffinity(0))}, mkldnn {torch.backends.mkldnn.is_available()}")

    torch.manual_seed(WEIGHT_SEED)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    data = np.load(args.input)
    if data.dtype != np.float32 or data.ndim < 1:
        log(f"{args.input}: want float32 [max_batch, ...], got {data.dtype} {data.shape}")
        return 2

    for batch, iters in args.runs:
        if batch > data.shape[0]:
            log(f"batch {batch} is larger than the input's {data.shape[0]} items")
            return 2
        x = torch.from_numpy(np.ascontiguousarray(data[:batch]))
        started = time.perf_counter()
        with torch.no_grad():
            scripted = torch.jit.freeze(torch.jit.trace(model, x).eval())
        prepare_s = time.perf_counter() - started
        samples = []
        with torch.no_grad():
            for _ in range(args.warmup):
                y = scripted(x)
            before = cpu_sample()
            for _ in range(iters):
                t0 = time.perf_counter_ns()
                y = scripted(x)
                samples.append((time.perf_counter_ns() - t0) / 1e6)
            others = other_cpu_pct(before, cpu_sample())
        if args.profile:
            with torch.no_grad(), torch.profiler.profile() as prof:
                scripted(x)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20),
                  file=sys.stderr)
        out = y.numpy()
        line = {"side": "pytorch", "batch": batch, "threads": torch.get_num_threads(),
                "iters": iters}
        samples.sort()
        line["p50_ms"] = percentile(samples, 50)
        line["p99_ms"] = percentile(samples, 99)
        line["min_ms"] = samples[0]
        line["mean_ms"] = sum(samples) / len(samples)
        if others is not None:
            line["other_cpu_pct"] = others
        line["ref_absmax"] = float(np.abs(out).max())
        other = os.path.join(args.compare, f"output-{batch}.npy") if args.compare else ""
        if other and os.path.exists(other):
            theirs = np.load(other)
            if theirs.shape != out.shape:
                log(f"{other}: shape {theirs.shape}, PyTorch's output is {out.shape}")
                return 1
            line["max_abs_diff"] = float(np.abs(theirs.astype(np.float64) - out).max())
        log(f"batch {batch}: trace+freeze {prepare_s:.1f} s, {iters} runs, "
            f"p50 {line['p50_ms']:.2f} ms, min {line['min_ms']:.2f} ms; other processes used "
            f"{line.get('other_cpu_pct', -1):.1f}% of the machine meanwhile")
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
