#!/usr/bin/env python3
"""Builds the GPU checks' models as ONNX files, with a reference input and PyTorch's output.

Run it with the python3 that has PyTorch (on the GPU machine its own; here Debian's
/usr/bin/python3 with PYTHONNOUSERSITE=1). For each model NAME it writes into --out:

  NAME.onnx        TorchScript exporter (dynamo=False where torch.onnx.export has that argument),
                   opset --opset (13..17, default 13), input "input" [N,3,S,S], output "output"
                   [N,1000], N dynamic
  NAME.input.npy   a seeded standard-normal input [--batch,3,S,S], float32
  NAME.output.npy  PyTorch's output on it (eval mode, float32, on the cpu in fp32, so it is the
                   reference whatever device the engine runs on)
  NAME.json        where the architecture came from, shapes, opset, torch version, |output| max

Models: resnet50, resnet18, mobilenet_v2. The architecture is torchvision's when torchvision
imports, otherwise the definitions below (the same layers, in the same order, as torchvision's
ResNet and MobileNetV2; SLICESERVE_GPU_MODELS_OWN=1 picks them even where torchvision imports,
to test them), so the script needs nothing but torch and numpy. Weights are random
with a fixed seed (torch.manual_seed(0) before construction); then every BatchNorm gets random
running statistics and affine parameters (seeded too), so BN is not an identity and folding it
into the convolutions is really exercised. build_model(name) is what bench/engine_pytorch.py
calls (--builder gpu_models) to run the same function in PyTorch.

--compare OURS.npy REF.npy (the check gpu-check runs on the engine's output): prints one JSON line
{"max_abs_err":..,"scale":..,"rel_err":..,"tolerance":..,"pass":..}, where scale is the largest
|REF| element and rel_err = max_abs_err / scale; exit status 0 when rel_err < --tolerance (1e-2:
cuDNN may use TF32 as PyTorch does), 1 when not or the shapes differ.

The `onnx` package is optional: when present, each file is checked (onnx.checker) and its op
census printed; when missing that is said and skipped. Progress goes to stderr, one JSON line per
model to stdout. Exit status: 0, 2 (usage), 3 (torch or numpy missing), 1 (a model failed).
"""

import argparse
import inspect
import json
import os
import sys
import time

WEIGHT_SEED = 0
BN_SEED = 2
INPUT_SEED = 1
MODELS = ("resnet50", "resnet18", "mobilenet_v2")


def log(msg):
    print(f"gpu_models: {msg}", file=sys.stderr, flush=True)


# ---- architectures (used when torchvision is missing) ----

def _definitions(nn):
    """ResNet and MobileNetV2 as torchvision defines them (torchvision/models/resnet.py and
    mobilenetv2.py, default arguments), with the same initialisation scheme."""

    def conv3x3(cin, cout, stride=1):
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

    def conv1x1(cin, cout, stride=1):
        return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, cin, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = conv3x3(cin, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = conv1x1(cin, planes)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = conv3x3(planes, planes, stride)  # stride on the 3x3 (ResNet v1.5)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = conv1x1(planes, planes * 4)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes=1000):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, 64, layers[0])
            self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
            self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
            self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

        def _make_layer(self, block, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                           nn.BatchNorm2d(planes * block.expansion))
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    def conv_bn_relu6(cin, cout, kernel=3, stride=1, groups=1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = int(round(cin * expand))
            self.use_res_connect = stride == 1 and cin == cout
            layers = [] if expand == 1 else [conv_bn_relu6(cin, hidden, kernel=1)]
            layers += [conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    def make_divisible(v, divisor=8):
        new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
        return new_v + divisor if new_v < 0.9 * v else new_v

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                        [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
            cin = make_divisible(32)
            self.last_channel = make_divisible(1280)
            features = [conv_bn_relu6(3, cin, stride=2)]
            for t, c, n, s in settings:
                cout = make_divisible(c)
                for i in range(n):
                    features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                    cin = cout
            features.append(conv_bn_relu6(cin, self.last_channel, kernel=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2),
                                            nn.Linear(self.last_channel, num_classes))
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(x.flatten(1))

    return {
        "resnet18": lambda: ResNet(BasicBlock, [2, 2, 2, 2]),
        "resnet50": lambda: ResNet(Bottleneck, [3, 4, 6, 3]),
        "mobilenet_v2": MobileNetV2,
    }


def architecture_source():
    if os.environ.get("SLICESERVE_GPU_MODELS_OWN") == "1":
        return "own definitions (SLICESERVE_GPU_MODELS_OWN=1)"
    try:
        import torchvision  # noqa: F401
        return "torchvision " + torchvision.__version__
    except Exception:  # ImportError, or a torchvision built for another torch
        return "own definitions (torchvision not importable)"


def build_model(name, torch=None):
    """The model NAME in eval mode, seeded weights and randomised BatchNorm statistics; the same
    on every call in one environment. Returns (model, source)."""
    if torch is None:
        import torch
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    source = architecture_source()
    torch.manual_seed(WEIGHT_SEED)
    if source.startswith("torchvision"):
        import torchvision
        model = getattr(torchvision.models, name)(weights=None)
    else:
        model = _definitions(torch.nn)[name]()
    gen = torch.Generator().manual_seed(BN_SEED)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
    return model.eval(), source


def reference_input(np, batch, size):
    rng = np.random.default_rng(INPUT_SEED)
    return rng.standard_normal((batch, 3, size, size), dtype=np.float32)


def export_onnx(torch, model, x, path, opset):
    kwargs = dict(opset_version=opset, do_constant_folding=True, input_names=["input"],
                  output_names=["output"],
                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    try:
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            kwargs["dynamo"] = False  # the TorchScript exporter: no onnxscript, no onnx needed
    except (TypeError, ValueError):
        pass
    with torch.no_grad():
        torch.onnx.export(model, x, path, **kwargs)


def onnx_census(path):
    try:
        import onnx
    except Exception as e:
        return None, f"onnx not importable ({e.__class__.__name__}): file not checked"
    model = onnx.load(path)
    onnx.checker.check_model(model)
    ops = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return dict(sorted(ops.items())), "checked with onnx.checker"


def build_one(torch, np, name, args):
    t0 = time.monotonic()
    model, source = build_model(name, torch)
    x = reference_input(np, args.batch, args.size)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy().astype(np.float32)
    stem = os.path.join(args.out, name)
    tmp = f"{stem}.onnx.tmp{os.getpid()}"
    try:
        export_onnx(torch, model, torch.from_numpy(x[:1].copy()), tmp, args.opset)
        ops, check = onnx_census(tmp)
        np.save(f"{stem}.input.npy", x)
        np.save(f"{stem}.output.npy", y)
        os.replace(tmp, f"{stem}.onnx")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    info = {"model": name, "source": source, "torch": torch.__version__, "opset": args.opset,
            "input": list(x.shape), "output": list(y.shape), "weight_seed": WEIGHT_SEED,
            "bn_seed": BN_SEED, "input_seed": INPUT_SEED,
            "output_absmax": float(np.abs(y).max()), "output_std": float(y.std()),
            "onnx_bytes": os.path.getsize(f"{stem}.onnx"), "onnx_check": check,
            "seconds": round(time.monotonic() - t0, 2)}
    if ops is not None:
        info["ops"] = ops
    with open(f"{stem}.json", "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    return info


def compare(np, ours_path, ref_path, tolerance):
    ours, ref = np.load(ours_path), np.load(ref_path)
    line = {"ours": ours_path, "ref": ref_path, "shape": list(ref.shape), "tolerance": tolerance}
    if ours.shape != ref.shape:
        line.update({"pass": False, "error": f"shape {list(ours.shape)}, want {list(ref.shape)}"})
    else:
        err = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max())
        scale = float(np.abs(ref).max()) or 1.0
        finite = bool(np.isfinite(ours).all())
        line.update({"max_abs_err": err, "scale": scale, "rel_err": err / scale,
                     "finite": finite, "pass": finite and err / scale < tolerance})
    print(json.dumps(line), flush=True)
    return 0 if line["pass"] else 1


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"default: {' '.join(MODELS)}")
    p.add_argument("--out", help="output folder (created)")
    p.add_argument("--compare", nargs=2, metavar=("OURS", "REF"),
                   help="compare two .npy files instead of building (see above)")
    p.add_argument("--tolerance", type=float, default=1e-2,
                   help="--compare: largest rel_err that passes (default 1e-2)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset, 13..17 (default 13)")
    p.add_argument("--batch", type=int, default=2, help="reference input batch (default 2)")
    p.add_argument("--size", type=int, default=224, help="input size (default 224)")
    args = p.parse_args(argv)
    if args.compare:
        try:
            import numpy as np
        except ImportError as e:
            log(f"{sys.executable}: {e}")
            return 3
        return compare(np, args.compare[0], args.compare[1], args.tolerance)
    if not args.out:
        p.error("--out DIR is required (or --compare OURS REF)")
    if not 13 <= args.opset <= 17:
        p.error("--opset must be in 13..17")
    names = args.names or list(MODELS)
    for n in names:
        if n not in MODELS:
            p.error(f"unknown model '{n}' (known: {', '.join(MODELS)})")
    try:
        import numpy as np
        import torch
    except ImportError as e:
        log(f"{sys.executable}: {e}")
        return 3
    os.makedirs(args.out, exist_ok=True)
    torch.set_grad_enabled(False)
    log(f"torch {torch.__version__}, architectures from {architecture_source()}, "
        f"opset {args.opset}, into {args.out}")
    rc = 0
    for name in names:
        try:
            info = build_one(torch, np, name, args)
        except Exception as e:  # report and go on with the next model
            log(f"{name}: {e.__class__.__name__}: {e}")
            print(json.dumps({"model": name, "ok": False, "error": str(e)[:300]}), flush=True)
            rc = 1
            continue
        log(f"{name}: {info['onnx_bytes'] / 1e6:.1f} MB, |output| max {info['output_absmax']:.3g}, "
            f"{info['onnx_check']}, {info['seconds']} s")
        print(json.dumps({"model": name, "ok": True, **{k: v for k, v in info.items()
                                                        if k != "ops"}}), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
