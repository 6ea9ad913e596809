"""Start-up benchmark (not a test): where the time to the first record goes, in fresh processes.

    python benchmarks/startup.py [--model efficientnet_lite0] [--weights FILE] [--image samples/kitten.jpg] [--repeat 3]

Prints, for one image: the whole `imgclassify predict IMAGE -m MODEL` process until its first
record (and until it exits), and a breakdown measured in a fresh interpreter, step by step:
Python + imgclassify, torch, reading the weights, building the model (the default
architectures are imgclassify.models.nets: neither timm nor torchvision is imported; it says so),
decoding, the first forward pass. Best of --repeat runs each. ``--weights FILE`` times a local
checkpoint (the DenseNet-121 path: ``--model densenet121 --weights densenet121.pth``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = shutil.which("imgclassify", path=str(Path(sys.executable).parent)) or "imgclassify"

# runs in a fresh interpreter (-P: imgclassify from PYTHONPATH or the venv, not the current folder):
# cumulative timestamps after each step, as JSON on stdout
_STEPS = r"""
import json, sys, time
t0 = time.perf_counter(); marks = {}
def mark(name): marks[name] = time.perf_counter() - t0
import imgclassify.cli; mark("python + imgclassify")
import torch; mark("torch")
from imgclassify.models.plan import plan_model
from imgclassify.options import ModelOptions
weights = sys.argv[3] or None
plan = plan_model(ModelOptions(model=sys.argv[1], weights=weights, device="cpu", offline=True)); mark("plan")
from imgclassify.models.weights import read_state_dict
state = read_state_dict(plan.weights_path); mark("read weights")
from imgclassify.models.architectures import build_with_state
net, _ = build_with_state(plan.spec, state); mark("build model")
from imgclassify.pipeline import build_classifier
clf = build_classifier(plan); mark("build classifier (again: weights, model, backend)")
tensor, _ = clf.decoder.try_decode(sys.argv[2]); mark("decode + preprocess")
clf.forward_uint8(tensor.unsqueeze(0)); mark("first forward pass")
marks["torchvision imported"] = any(m.split(".")[0] == "torchvision" for m in sys.modules)
marks["timm imported"] = any(m.split(".")[0] == "timm" for m in sys.modules)
print(json.dumps(marks))
"""


def whole_process(model: str, weights: str, image: str) -> tuple[float, float]:
    env = {**os.environ, "IMGCLASSIFY_OFFLINE": "1"}
    start = time.perf_counter()
    extra = ["--weights", weights] if weights else []
    command = [EXE, "predict", image, "-m", model, *extra, "-f", "jsonl", "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    proc.stdout.readline()
    first = time.perf_counter() - start
    proc.wait()
    return first, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="", help="a local checkpoint for --model")
    parser.add_argument("--image", default=str(ROOT / "samples" / "kitten.jpg"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from imgclassify.system.capabilities import cpu_description

    weights = f" --weights {args.weights}" if args.weights else ""
    print(f"# start-up: {args.model}{weights}, one image, {cpu_description()}")
    runs = [whole_process(args.model, args.weights, args.image) for _ in range(args.repeat)]
    best = min(runs)
    print(f"whole process, first record: {best[0]:.2f} s (exit {best[1]:.2f} s); all runs: "
          + ", ".join(f"{a:.2f}" for a, _ in runs))  # fmt: skip
    steps = []
    for _ in range(args.repeat):
        out = subprocess.run(
            [sys.executable, "-P", "-c", _STEPS, args.model, args.image, args.weights], capture_output=True, text=True
        )
        if out.returncode:
            raise SystemExit(out.stderr)
        steps.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| step | s (cumulative, best run) | s (step) |")
    print("| --- | ---: | ---: |")
    chosen = min(steps, key=lambda marks: marks["first forward pass"])
    previous = 0.0
    for name, value in chosen.items():
        if isinstance(value, bool):
            continue
        print(f"| {name} | {value:.2f} | {value - previous:.2f} |")
        previous = value
    print(f"torchvision imported: {chosen['torchvision imported']}; timm imported: {chosen['timm imported']}")


if __name__ == "__main__":
    main()
