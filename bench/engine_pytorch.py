#!/usr/bin/env python3
"""The PyTorch side of `scripts/bench engine`: bench/engine_bench.cpp starts it as a child.

Runs a torchvision model as frozen TorchScript (torch.jit.trace, then torch.jit.freeze, one
module per batch size) on the input the C++ side wrote, with torch.set_num_threads(--threads)
on the cpus given. It reads commands on stdin, one per line, and answers each with one JSON
line on stdout ({"side":"ready"} first, once the model is built):

  run B N   trace and freeze at batch B and run --warmup untimed runs the first time; then
            sleep 50 ms, one untimed run, N timed runs:
            {"side":"pytorch","batch":B,"threads":T,"samples_ms":[...],"other_cpu_s":..,
             "machine_cpu_s":..,"prepare_s":..,"ref_absmax":..,"max_abs_diff":..}
  quit      (or end of input) exit 0

samples_ms are the wall times of the timed runs (time.perf_counter_ns around the call).
other_cpu_s is the CPU time the whole machine (all cpus, steal included) spent on other
processes during them, machine_cpu_s the machine's CPU time in that interval (cpus x wall);
prepare_s (first run of a batch only) the trace + freeze time; ref_absmax the largest |output|
and max_abs_diff the largest difference to the other side's output DIR/output-B.npy (--compare)
when that file exists. With --onnx the first line is the model's FLOP count from the ONNX file
(onnx shape inference), a check on the C++ count:

  {"side":"onnx","gflop_per_image":8.18,"conv":53,"gemm":1}

The model is built the way scripts/export_models.py builds the ONNX file (torch.manual_seed(0),
torchvision.models.NAME(weights=None), eval), so both sides compute the same function; with
--builder gpu_models the way scripts/gpu_models.py builds its files (build_model: torchvision's or
its own definitions, BatchNorm statistics randomised).

--device cuda (engine_bench --device cuda:N): PyTorch eager mode on the GPU, no TorchScript,
torch.backends.cudnn.benchmark = True (the warm-up runs let cuDNN pick its algorithms). A timed
run is what the engine's run() does: the host input copied to the GPU, the model, the output
copied back, between two torch.cuda.synchronize() calls; "device_only_samples_ms" are the same
number of runs of the model alone on an input already on the GPU (synchronized after each). Exit
status 4 when torch.cuda.is_available() is false.
Progress goes to stderr. Run it with Debian's /usr/bin/python3 and PYTHONNOUSERSITE=1; by hand:

  echo "run 1 20" | PYTHONNOUSERSITE=1 /usr/bin/python3 bench/engine_pytorch.py \\
      --input x.npy --threads 2
"""

import argparse
import json
import os
import sys
import time

WEIGHT_SEED = 0  # scripts/export_models.py


def log(msg):
    print(f"engine_pytorch: {msg}", file=sys.stderr, flush=True)


def reply(obj):
    print(json.dumps(obj), flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", help="torchvision model name")
    p.add_argument("--input", required=True,
                   help=".npy float32 [max_batch, C, H, W]; batch B uses the first B items")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs after tracing a batch")
    p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    p.add_argument("--cpus", default="",
                   help="comma-separated cpus for the process (os.sched_setaffinity)")
    p.add_argument("--compare", default="",
                   help="folder with output-B.npy files of the other side to compare with")
    p.add_argument("--onnx", default="", help="count FLOPs from this ONNX file first")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler's per-op table for each batch on stderr")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu: frozen TorchScript; cuda: eager mode with cuDNN on the GPU")
    p.add_argument("--builder", default="torchvision", choices=["torchvision", "gpu_models"],
                   help="how the model is built (scripts/models' torchvision models, or "
                        "scripts/gpu_models.py's build_model)")
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
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)

    def attr(node, name, default):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def product(dims):
        p = 1
        for d in dims:
            p *= d
        return p

    flops = 0
    counts = {"Conv": 0, "Gemm": 0}
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = shapes[node.input[1]]  # [Cout, Cin/group, kh, kw]
            y = shapes[node.output[0]]  # [N, Cout, Hout, Wout]
            flops += 2 * product(y) * product(w[1:])
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
    """(machine busy s, machine total s, this process's CPU s), as engine_bench.cpp samples."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    busy = (user + nice + system + irq + softirq + steal) * tick
    t = os.times()
    return busy, busy + (idle + iowait) * tick, t.user + t.system


def build_model(args, torch, torchvision):
    if args.builder == "gpu_models":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                        "scripts"))
        import gpu_models
        model, source = gpu_models.build_model(args.model, torch)
        log(f"{args.model} from scripts/gpu_models.py ({source})")
        return model
    torch.manual_seed(WEIGHT_SEED)
    return getattr(torchvision.models, args.model)(weights=None).eval()


class Runner:
    def __init__(self, args, torch, torchvision, np):
        self.args, self.torch, self.np = args, torch, np
        self.cuda = args.device == "cuda"
        self.model = build_model(args, torch, torchvision)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            self.model = self.model.cuda()
        self.data = np.load(args.input)
        if self.data.dtype != np.float32 or self.data.ndim < 1:
            raise ValueError(f"{args.input}: want float32 [max_batch, ...], got "
                             f"{self.data.dtype} {self.data.shape}")
        self.modules = {}  # batch -> (frozen module, input)

    def prepare(self, batch):
        torch = self.torch
        if batch > self.data.shape[0]:
            raise ValueError(f"batch {batch} is larger than the input's {self.data.shape[0]}")
        x = torch.from_numpy(self.np.ascontiguousarray(self.data[:batch]))
        started = time.perf_counter()
        if self.cuda:
            # Eager: nothing to trace; the warm-up runs are where cuDNN benchmarks its algorithms.
            with torch.no_grad():
                for _ in range(max(1, self.args.warmup)):
                    self.model(x.cuda()).cpu()
            torch.cuda.synchronize()
            self.modules[batch] = (self.model, x)
            return time.perf_counter() - started
        with torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(self.model, x).eval())
            prepare_s = time.perf_counter() - started
            for _ in range(self.args.warmup):
                frozen(x)
        self.modules[batch] = (frozen, x)
        if self.args.profile:
            with torch.no_grad(), torch.profiler.profile() as prof:
                frozen(x)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20),
                  file=sys.stderr)
        return prepare_s

    def run(self, batch, iters):
        torch, np = self.torch, self.np
        line = {"side": "pytorch", "batch": batch, "threads": torch.get_num_threads()}
        if batch not in self.modules:
            line["prepare_s"] = self.prepare(batch)
        frozen, x = self.modules[batch]
        samples = []
        time.sleep(0.05)  # the other side's OpenMP threads stop spinning
        with torch.no_grad():
            if self.cuda:
                y = frozen(x.cuda()).cpu()
                torch.cuda.synchronize()
            else:
                y = frozen(x)
            before = cpu_sample()
            for _ in range(iters):
                if self.cuda:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter_ns()
                    y = frozen(x.cuda()).cpu()
                    torch.cuda.synchronize()
                else:
                    t0 = time.perf_counter_ns()
                    y = frozen(x)
                samples.append((time.perf_counter_ns() - t0) / 1e6)
            after = cpu_sample()
            if self.cuda:
                x_dev = x.cuda()
                device_only = []
                torch.cuda.synchronize()
                for _ in range(iters):
                    t0 = time.perf_counter_ns()
                    frozen(x_dev)
                    torch.cuda.synchronize()
                    device_only.append((time.perf_counter_ns() - t0) / 1e6)
                line["device_only_samples_ms"] = device_only
        line["samples_ms"] = samples
        line["other_cpu_s"] = max(0.0, (after[0] - before[0]) - (after[2] - before[2]))
        line["machine_cpu_s"] = after[1] - before[1]
        out = y.numpy()
        line["ref_absmax"] = float(np.abs(out).max())
        theirs = os.path.join(self.args.compare, f"output-{batch}.npy")
        if self.args.compare and os.path.exists(theirs):
            other = np.load(theirs)
            if other.shape != out.shape:
                raise ValueError(f"{theirs}: shape {other.shape}, PyTorch's output is "
                                 f"{out.shape}")
            line["max_abs_diff"] = float(np.abs(other.astype(np.float64) - out).max())
        return line


def main(argv):
    args = parse_args(argv)
    if args.cpus:
        cpus = [int(c) for c in args.cpus.split(",")]
        os.sched_setaffinity(0, cpus)
    try:
        import numpy as np
        import torch
        torchvision = None
        if args.builder == "torchvision":
            import torchvision
    except ImportError as e:
        log(f"{e}; run scripts/install-deps (Debian's python3-torch, python3-torchvision)")
        return 3
    if args.device == "cuda" and not torch.cuda.is_available():
        log(f"torch {torch.__version__}: torch.cuda.is_available() is false (no GPU, or a "
            "cpu-only build)")
        return 4

    if args.onnx:
        try:
            flops, counts = onnx_flops(args.onnx)
        except ImportError as e:
            log(f"{e}: cannot count FLOPs from the ONNX file (python3-onnx)")
        else:
            reply({"side": "onnx", "gflop_per_image": flops / 1e9, "conv": counts["Conv"],
                   "gemm": counts["Gemm"]})

    torch.set_num_threads(args.threads)
    gpu = (f", {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}, "
           f"TF32 in cuDNN {torch.backends.cudnn.allow_tf32}" if args.device == "cuda" else "")
    log(f"torch {torch.__version__}, torchvision "
        f"{torchvision.__version__ if torchvision else '-'}, {args.device}{gpu}, "
        f"{torch.get_num_threads()} threads on cpus {args.cpus or 'any'}, OMP_PLACES "
        f"{os.environ.get('OMP_PLACES', '-')}, mkldnn {torch.backends.mkldnn.is_available()}")
    try:
        runner = Runner(args, torch, torchvision, np)
    except (ValueError, OSError) as e:
        log(str(e))
        return 2
    reply({"side": "ready"})
    for command in sys.stdin:
        words = command.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] != "run" or len(words) != 3:
            log(f"unknown command {command.strip()!r} (run BATCH ITERS | quit)")
            return 2
        try:
            line = runner.run(int(words[1]), int(words[2]))
        except ValueError as e:
            log(str(e))
            return 2
        if "prepare_s" in line:
            what = "warm-up (cudnn.benchmark)" if args.device == "cuda" else "trace+freeze"
            log(f"batch {line['batch']}: {what} {line['prepare_s']:.1f} s")
        reply(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
