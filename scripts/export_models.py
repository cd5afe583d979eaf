#!/usr/bin/python3
"""Builds ONNX files of torchvision classification models with seeded random weights.

Run through scripts/models (which picks Debian's /usr/bin/python3). See docs/models.md.

For each model NAME at input size S it writes, under the output folder (models/ by default),
with STEM = NAME for S == 224 and NAME-S otherwise:
  STEM.onnx         opset 13, input "input" [N,3,S,S], output "output" [N,1000], N dynamic
  STEM.json         shapes, dtype, opset, torch version, parameter count, op census, timings
  STEM.input.npy    a seeded random input, batch 1, float32
  STEM.output.npy   PyTorch's output on it, float32
Every file is written to a temporary name and renamed, so a killed run leaves no truncated
file; a model whose four files all exist is not rebuilt unless --force is given.
"""

import argparse
import json
import os
import sys
import time

OPSET = 13
DEFAULT_SIZE = 224
WEIGHT_SEED = 0
INPUT_SEED = 1

# name -> (constructor keyword arguments, smallest input size it exports at, what it needs)
# The minimum sizes are measured with torch 1.13 (docs/models.md): below them a feature map
# shrinks to nothing. AlexNet and VGG end in an adaptive average pooling to 6x6 / 7x7, which
# the ONNX exporter can only express when the feature map is a multiple of that size: AlexNet
# exports at 223..254 (then from 6x6 * 2 upwards), VGG at 224..255 (then 448..).
MODELS = {
    "resnet18": ({}, 1, "any size; 5 stride-2 stages, GlobalAveragePool head"),
    "resnet50": ({}, 1, "any size; bottleneck blocks, GlobalAveragePool head"),
    "mobilenet_v2": ({}, 1, "any size; depthwise convs, Clip (ReLU6)"),
    "mobilenet_v3_small": ({}, 1, "any size; HardSwish/HardSigmoid, SE blocks"),
    "squeezenet1_0": ({}, 21, ">= 21; ceil-mode max pools, Concat (fire modules)"),
    "alexnet": ({}, 223, "223..254 only (AdaptiveAvgPool 6x6 must divide the feature map); LRN-free"),
    "vgg11": ({}, 224, "224..255 only (AdaptiveAvgPool 7x7 must divide the feature map); 531 MB"),
    "densenet121": ({}, 29, ">= 29; 623 nodes, many Concats"),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 15,
                  ">= 15; ceil-mode max pools, Concat; aux heads left out (unused in eval)"),
    "shufflenet_v2_x1_0": ({}, 1, "any size; channel shuffle = Shape/Gather/Reshape/Transpose/Split"),
    "efficientnet_b0": ({}, 1, "any size; SiLU as Sigmoid*Mul, SE blocks"),
    "regnet_x_400mf": ({}, 1, "any size; grouped convs"),
}


def stem_for(name, size):
    return name if size == DEFAULT_SIZE else f"{name}-{size}"


def log(msg):
    print(f"models: {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="scripts/models",
        description="Build ONNX files of torchvision classification models with seeded random "
                    "weights (torch.manual_seed(0)), opset 13, dynamic batch, plus a JSON "
                    "description with the op census and a reference input/output pair (.npy). "
                    "Cached: a model whose files exist is not rebuilt unless --force.",
        epilog="Default set: " + " ".join(MODELS) + ". See docs/models.md.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="models to build (default: all of them)")
    p.add_argument("--list", action="store_true",
                   help="print the model names and what each needs, then exit")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: models/ at the repository root)")
    p.add_argument("--input-size", type=int, default=DEFAULT_SIZE, metavar="N",
                   help=f"square input size (default {DEFAULT_SIZE}; 64 for quick runs, "
                        "see --list for which models accept it)")
    return p.parse_args(argv)


def print_list():
    print(f"{'name':<20} {'min size':>8}  needs")
    for name, (kwargs, min_size, why) in MODELS.items():
        extra = f" [{', '.join(f'{k}={v}' for k, v in kwargs.items())}]" if kwargs else ""
        print(f"{name:<20} {min_size:>8}  {why}{extra}")


def import_deps():
    missing = []
    mods = {}
    for mod in ("numpy", "torch", "torchvision", "onnx"):
        try:
            mods[mod] = __import__(mod)
        except Exception as e:  # ImportError, or a broken install raising something else
            missing.append(f"{mod} ({e.__class__.__name__}: {e})")
    if missing:
        log(f"{sys.executable} lacks " + ", ".join(missing))
        log("run scripts/install-deps (Debian python3-torchvision and python3-onnx)")
        sys.exit(3)
    return mods


def atomic_write(path, write):
    """Calls write(tmp_path) and renames tmp_path to path; removes the temporary on failure."""
    tmp = f"{os.path.dirname(path) or '.'}/.{os.path.basename(path)}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def op_census(onnx, path):
    model = onnx.load(path)
    onnx.checker.check_model(model)
    ops = {}

    def walk(graph):
        for node in graph.node:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            ops[op] = ops.get(op, 0) + 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    # The batch dimension must stay symbolic through the graph, not be pinned to 1 anywhere.
    inferred = onnx.shape_inference.infer_shapes(model)
    out_dim = inferred.graph.output[0].type.tensor_type.shape.dim[0]
    if out_dim.dim_param != "batch":
        raise RuntimeError(f"output batch dimension is {out_dim}, not the symbolic 'batch'")
    return dict(sorted(ops.items())), len(model.graph.node)


def build(mods, name, size, out_dir):
    np, torch, torchvision, onnx = mods["numpy"], mods["torch"], mods["torchvision"], mods["onnx"]
    kwargs = MODELS[name][0]
    stem = os.path.join(out_dir, stem_for(name, size))
    t0 = time.monotonic()

    torch.manual_seed(WEIGHT_SEED)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters())

    gen = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.randn(1, 3, size, size, generator=gen, dtype=torch.float32)
    with torch.no_grad():
        y = model(x)
    if tuple(y.shape) != (1, 1000):
        raise RuntimeError(f"unexpected output shape {tuple(y.shape)}")
    t_build = time.monotonic()

    def export(tmp):
        with torch.no_grad():
            torch.onnx.export(model, x, tmp, opset_version=OPSET, do_constant_folding=True,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    onnx_path = f"{stem}.onnx"
    # The ONNX file is written last (below), so export into a temporary first and census it.
    tmp_onnx = f"{os.path.dirname(stem)}/.{os.path.basename(stem)}.onnx.tmp{os.getpid()}"
    try:
        export(tmp_onnx)
        t_export = time.monotonic()
        op_counts, nodes = op_census(onnx, tmp_onnx)

        def save(arr):
            def w(tmp):
                with open(tmp, "wb") as f:
                    np.save(f, arr)
            return w
        atomic_write(f"{stem}.input.npy", save(x.numpy().astype(np.float32)))
        atomic_write(f"{stem}.output.npy", save(y.numpy().astype(np.float32)))
        ya = y.numpy()
        info = {
            "name": name,
            "input": [1, 3, size, size],
            "output": [1, 1000],
            "dtype": "FP32",
            "opset": OPSET,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "params": int(params),
            "nodes": nodes,
            "ops": list(op_counts),
            "op_counts": op_counts,
            "weight_seed": WEIGHT_SEED,
            "input_seed": INPUT_SEED,
            "output_absmax": float(abs(ya).max()),
            "output_std": float(ya.std()),
            "onnx_bytes": os.path.getsize(tmp_onnx),
            "build_s": round(t_build - t0, 3),
            "export_s": round(t_export - t_build, 3),
        }

        def wjson(tmp):
            with open(tmp, "w") as f:
                json.dump(info, f, indent=1)
                f.write("\n")
        atomic_write(f"{stem}.json", wjson)
        os.replace(tmp_onnx, onnx_path)
    finally:
        if os.path.exists(tmp_onnx):
            os.unlink(tmp_onnx)
    info["total_s"] = round(time.monotonic() - t0, 3)
    return info


def main(argv):
    args = parse_args(argv)
    if args.list:
        print_list()
        return 0
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        log(f"unknown model(s): {' '.join(unknown)}; known: {' '.join(MODELS)}")
        return 2
    if args.input_size < 1:
        log("--input-size must be positive")
        return 2
    names = args.names or list(MODELS)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = args.out or os.path.join(root, "models")
    os.makedirs(out_dir, exist_ok=True)

    mods = import_deps()
    mods["torch"].set_num_threads(max(1, os.cpu_count() or 1))
    failed = []
    for name in names:
        stem = os.path.join(out_dir, stem_for(name, args.input_size))
        files = [f"{stem}{ext}" for ext in (".onnx", ".json", ".input.npy", ".output.npy")]
        if not args.force and all(os.path.exists(f) for f in files):
            log(f"{name} {args.input_size}: cached ({stem}.onnx)")
            continue
        if args.input_size < MODELS[name][1]:
            log(f"{name} {args.input_size}: warning: below its measured minimum input size "
                f"{MODELS[name][1]}; input size {MODELS[name][2]}; trying anyway")
        try:
            info = build(mods, name, args.input_size, out_dir)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log(f"{name} {args.input_size}: FAILED: {e.__class__.__name__}: {msg}")
            failed.append(name)
            continue
        log(f"{name} {args.input_size}: {info['total_s']:.1f}s (export {info['export_s']:.1f}s), "
            f"{info['params'] / 1e6:.2f}M params, {info['nodes']} nodes, "
            f"{info['onnx_bytes'] / 1e6:.1f} MB -> {stem}.onnx")
    if failed:
        log(f"failed: {' '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
