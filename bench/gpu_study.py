"""The thesis's main setting on one GPU, measured: the GPU benchmark, then the GoogLeNet preset end to end.

    PYTHONPATH=. python -m bench.gpu_study              # on the GPU machine: bench.gpu, then the study
    PYTHONPATH=. python -m bench.gpu_study --no-bench   # the study only
    PYTHONPATH=. python -m bench.gpu_study --tiny       # a CPU smoke run: bench.gpu --tiny, then a 10-class study

(a) runs `python -m bench.gpu` (this Python, PYTHONPATH=.) and passes its output through; (b) generates an
ImageFolder in ImageNet's layout (100 of its classes, flamingo among them, 200 training and 20 validation
JPEGs each at 224 px, and the LOC_synset_mapping.txt that names them), writes a randomly initialised
torchvision GoogLeNet where the preset's `weights: default` looks ($TORCH_HOME/hub/checkpoints), and runs
`configs/imagenet_googlenet.yaml` on it stage by stage from Python (the stages the study notebooks run,
without papermill, notebooks or figures), every stage on CUDA and the SAEs trained in bf16 (`sae.precision`,
the only bf16 setting the configuration offers). It prints images/s per stage as each stage ends, then a table.

The random network sees the generated classes: its batch-norm statistics come from the training images (a
random GoogLeNet's activations otherwise fade to nothing) and the first outputs read the classes out of its
pooled features (ridge regression), so accuracy, attribution and faithfulness are not degenerate.

Needs PyTorch, torchvision (with Pillow), numpy, safetensors, tqdm and pyyaml; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
PRESET = REPO / "configs" / "imagenet_googlenet.yaml"
# The CPU smoke run's sizes (those of tests/presets.py): everything else is the preset's.
TINY_SET = ["capture.positions_per_image=4", "sae.expansion=1", "sae.steps=20", "sae.batch_size=64", "sae.checkpoints=2",
            "sae.lr_warmup=0", "sae.init_sample=1000", "attribution.n_reference=10", "circuit.top_k=2",
            "circuit.curve_points=3", "circuit.n_random=1", "mis.n_tasks=2", "mis.n_refs=2",
            "execution.batch_size=10", "execution.grad_batch_size=8"]


def run_bench(tiny: bool) -> int:
    "(a): `python -m bench.gpu` in a child process (its own CUDA context), output passed through."
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    print(f"$ PYTHONPATH=. python -m bench.gpu{' --tiny' if tiny else ''}", flush=True)
    return subprocess.run([sys.executable, "-m", "bench.gpu", *(["--tiny"] if tiny else [])], cwd=REPO, env=env).returncode


def class_image(k: int, n_classes: int, i: int, side: int, seed: int) -> np.ndarray:
    "An RGB image of class `k`: a class colour, stripes at a class angle and frequency, noise; `uint8 (side, side, 3)`."
    rng = np.random.default_rng([seed, k, i])
    colour = np.array([(k * 0.37) % 1, (k * 0.61 + 0.3) % 1, (k * 0.83 + 0.6) % 1])
    ys, xs = np.mgrid[0:side, 0:side] / side
    angle = np.pi * k / n_classes
    freq = 3 + k % 7
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xs * np.cos(angle) + ys * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    img = 0.6 * colour + 0.3 * stripes[..., None] + 0.1 * rng.random((side, side, 3))
    return (255 * np.clip(img, 0, 1)).astype(np.uint8)


def _write_image(job) -> None:
    from PIL import Image
    path, k, n_classes, i, side, seed = job
    Image.fromarray(class_image(k, n_classes, i, side, seed)).save(path, quality=90)


def make_imagefolder(root: Path, n_classes: int, n_train: int, n_val: int, side: int = 224) -> str:
    """ImageNet's layout under `root`: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG and LOC_synset_mapping.txt, for
    `n_classes` of ImageNet's classes spread over its 1000 (flamingo always among them); returns flamingo's
    class name as the data loader gives it ("<wnid>, flamingo")."""
    from torchvision.models import GoogLeNet_Weights
    names = GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"]
    flamingo = names.index("flamingo")
    spread = [i for i in np.linspace(0, 999, n_classes).round().astype(int).tolist() if i != flamingo]
    picked = sorted(spread[:n_classes - 1] + [flamingo])
    wnids = [f"n{i:08d}" for i in picked]  # stand-ins for WordNet ids, in ImageNet's order
    jobs = []
    for k, wnid in enumerate(wnids):
        for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            jobs += [(root / split / wnid / f"{wnid}_{i}.JPEG", k, len(wnids), i, side, seed) for i in range(n)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        pool.map(_write_image, jobs, chunksize=64)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {names[i]}\n" for w, i in zip(wnids, picked)))
    return f"n{flamingo:08d}, flamingo"


def random_googlenet_state(root: Path, device: torch.device, per_class: int) -> dict:
    """A randomly initialised torchvision GoogLeNet in the format of torchvision's ImageNet file (the bare network
    with its auxiliary heads), its batch-norm statistics taken from `per_class` training images of each class (in the
    network's input range [-1, 1]) and its first outputs reading the classes out of the pooled features."""
    from PIL import Image
    from torchvision.models import googlenet
    from torchvision.transforms.functional import to_tensor
    wnids = sorted(p.name for p in (root / "train").iterdir())
    files = [f for w in wnids for f in sorted((root / "train" / w).glob("*.JPEG"))[:per_class]]
    x = torch.stack([to_tensor(Image.open(f).convert("RGB")) for f in files]).to(device) * 2 - 1
    y = torch.tensor([wnids.index(f.parent.name) for f in files], device=device)
    torch.manual_seed(0)
    net = googlenet(weights=None, aux_logits=True, init_weights=True).to(device)
    for bn in [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    pooled = []
    hook = net.avgpool.register_forward_hook(lambda m, i, o: pooled.append(o.flatten(1)))
    with torch.no_grad():
        net.train()
        for batch in x.split(64):
            net(batch)
        pooled.clear()
        net.eval()
        for batch in x.split(64):
            net(batch)
    hook.remove()
    f = torch.cat([torch.cat(pooled), torch.ones(len(x), 1, device=device)], 1).double()
    target = 5 * torch.nn.functional.one_hot(y, len(wnids)).double()
    w = torch.linalg.solve(f.T @ f + 1e-2 * torch.eye(f.shape[1], device=device, dtype=f.dtype), f.T @ target).float()
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.zero_()
        net.fc.weight[:len(wnids)] = w[:-1].T
        net.fc.bias[:len(wnids)] = w[-1]
    return {k: v.cpu() for k, v in net.state_dict().items()}


def rate(x: float) -> str:
    "A rate with three significant digits below 100, whole numbers (with thousands separators) above."
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def stage_counts(study, name: str, summary: dict) -> tuple[int, str]:
    "How many images stage `name` went through, and what is counted."
    cfg = study.cfg
    layers = list(cfg.capture.layers)
    if name == "model":
        return len(study.data().test), "validation images classified"
    if name == "activations":
        return summary[layers[0]]["n_images"], f"training images through the model, {len(layers)} layers cached"
    if name == "saes":
        n = study.records["activations"]["summary"][layers[0]]["n_images"]
        vectors = sum(s["epochs"] * study.records["activations"]["summary"][l]["n_vectors"] for l, s in summary.items())
        return n * cfg.sae.epochs, f"images' vectors × epochs ({vectors:,} vectors over {len(layers)} SAEs)"
    if name == "sae_eval":
        return summary[layers[0]]["n_images"], f"validation images, each spliced at {len(layers)} layers × every epoch"
    if name == "attribution":
        a = study.records["attribution"]["summary"]
        return 2 * (cfg.attribution.n_reference + a["n_images"]), "reference + target images, SAE features and neurons"
    if name == "circuit":
        return summary["n_eval"], "held-out target images (faithfulness, curves); plus the discovery images' edges"
    if name == "mis":
        return summary["n_images"], f"validation images through the model and the embedding, {len(layers)} layers"
    return 0, ""


def run_study(workdir: Path, tiny: bool) -> list[tuple]:
    "(b): the preset, stage by stage; returns rows (stage, wall s, images, images/s, what is counted)."
    device = torch.device("cpu" if tiny else "cuda")
    n_classes, n_train, n_val = (10, 4, 2) if tiny else (100, 200, 20)
    t = time.perf_counter()
    data = workdir / "imagenet"
    make_imagefolder(data, n_classes, n_train, n_val)
    print(f"generated {n_classes * (n_train + n_val):,} JPEGs at 224 px in {time.perf_counter() - t:.1f} s", flush=True)
    os.environ["TORCH_HOME"] = str(workdir / "torch")  # where `weights: default` looks
    from sfc_vision.models import pretrained_path
    weights = pretrained_path("googlenet")
    weights.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    torch.save(random_googlenet_state(data, device, min(n_train, 20)), weights)
    print(f"random GoogLeNet written to {weights} in {time.perf_counter() - t:.1f} s", flush=True)

    from sfc_vision.cache import STAGES, Study
    import sfc_vision.stages  # noqa: F401  registers the stages
    from sfc_vision.study_config import load_config
    settings = [f"data.root={data}", f"data.workers={min(8, os.cpu_count() or 1)}",
                f"execution.device={device.type}"]
    settings += (["run.needs_gpu=false", *TINY_SET] if tiny else ["sae.precision=bfloat16"])
    cfg = load_config(PRESET, settings)
    print("settings beyond the preset: " + " ".join(settings), flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    study = Study(cfg, workdir / "runs", progress=False)
    rows = []
    for name in STAGES:
        t = time.perf_counter()
        record = study.ensure(name)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        n, what = stage_counts(study, name, record["summary"])
        rows.append((name, wall, n, n / wall, what))
        print(f"[{name}] {wall:.1f} s, {n:,} images, {rate(n / wall)} images/s ({what})", flush=True)
    s = study.records
    print(f"model accuracy {s['model']['summary']['accuracy']:.3f}; circuit {s['circuit']['summary']['nodes']} nodes, "
          f"{s['circuit']['summary']['edges']} edges, faithfulness {s['circuit']['summary']['faithfulness']:.3f} on "
          f"{s['circuit']['summary']['n_eval']} {cfg.circuit.target_class} images", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a CPU smoke run: bench.gpu --tiny and a 10-class study")
    p.add_argument("--no-bench", action="store_true", help="skip (a), the benchmark")
    p.add_argument("--workdir", type=Path, default=None, help="where the images and runs go (default: a temporary folder, removed)")
    args = p.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("bench.gpu_study: no CUDA device; this is for a GPU (use --tiny for a CPU smoke run)")
    start = time.perf_counter()
    if not args.no_bench and run_bench(args.tiny) != 0:
        print("bench.gpu failed; the study runs anyway", flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sfc_gpu_study_"))
    try:
        rows = run_study(workdir, args.tiny)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "CPU"
    print(f"\n{time.strftime('%Y-%m-%d')}, {card}, torch {torch.__version__}: configs/imagenet_googlenet.yaml, random weights\n")
    print("| stage | wall (s) | images | images/s | counted |\n|---|---|---|---|---|")
    for name, wall, n, per_s, what in rows:
        print(f"| {name} | {wall:.1f} | {n:,} | {rate(per_s)} | {what} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
