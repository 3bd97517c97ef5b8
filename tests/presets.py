"""Shared pieces of the preset tests (`test_preset_googlenet.py`, `test_preset_resnet.py`), one test per file so
that pytest-xdist (`--dist loadfile`) runs the two, minutes each, side by side.

The thesis's own settings end to end on the CPU: `configs/imagenet_googlenet.yaml` (GoogLeNet, the nine
mixed layers, the flamingo circuit) and `configs/tinyimagenet_resnet18.yaml` (ResNet-18 for small images,
trained here), each on a generated folder of JPEGs in its dataset's layout, through the `sfc-vision` command.

Only sizes shrink, and only through `--set` (the lists below): the presets' own layers, position sampling,
pretrained-weights path (a randomly initialised torchvision GoogLeNet saved where torchvision keeps its
ImageNet weights), class-restricted circuit and figures are what runs. Each run takes about three to four minutes of
CPU time on this 2-core machine (GoogLeNet 230 s, ResNet 175 s, measured with both tests' images shrunk: GoogLeNet
at 112 px, ResNet at 32 px; at the presets' 224 and 64 px each took twice that and more), hence `slow`."""
import numpy as np
import pytest
import torch
from conftest import REPO, read_json, run_cli

from sfc_vision.models import GOOGLENET_ALIASES, pretrained_path
from sfc_vision.cache import STAGES, run_folder, run_name
from sfc_vision.stages import RunOutputs, Study
from sfc_vision.study_config import load_config

CONFIGS = REPO / "configs"
MIXED = list(GOOGLENET_ALIASES)  # mixed3a … mixed5b

GOOGLENET_SIDE = 112  # the side GoogLeNet sees (the folder's JPEGs are 256/224 of it: resized to themselves, centre-cropped)

RESNET_SIDE = 32  # the side ResNet-18 sees (the 64 px folder resized to 37 px and centre-cropped)

# Every setting the tests change, in one place: sizes (images, epochs, widths, tasks) and where things run.
GOOGLENET_SET = [
    "run.needs_gpu=false",
    "data.workers=2",
    "capture.positions_per_image=4",
    "sae.expansion=1",
    "sae.steps=20",
    "sae.batch_size=64",
    "sae.lr_warmup=0",
    "sae.init_sample=1000",
    "attribution.n_images=100",  # more than the flamingo images: all of them, and only them
    "attribution.n_reference=10",
    "attribution.ig_steps=4",  # the error nodes' IG starts here and doubles its steps up to ig_max_steps (160 took 5 of the test's 10 minutes)
    "attribution.ig_max_steps=8",
    f"data.image_size={GOOGLENET_SIDE}",  # the preset's 224 px: every stage's forward passes four times as costly
    "circuit.select=top_k",
    "circuit.top_k=2",
    "circuit.curve_points=3",
    "circuit.n_random=1",
    "mis.n_tasks=2",
    "mis.n_refs=2",
    "sae.checkpoints=2",
    "execution.device=cpu",
    "execution.batch_size=12",
    "execution.grad_batch_size=8",
]
RESNET_SET = [
    "run.needs_gpu=false",
    f"data.image_size={RESNET_SIDE}",  # the small-image stem keeps layer1 at full resolution: 64 px made the training most of the test
    "data.workers=0",
    "train.epochs=4",
    "train.batch_size=8",
    "train.optimizer=adam",  # the preset's SGD at lr 0.1 diverges in the few steps of 40 images (and is refused as such)
    "train.lr=0.001",
    "capture.positions_per_image=4",
    "sae.expansion=1",
    "sae.steps=20",
    "sae.batch_size=64",
    "sae.lr_warmup=0",
    "sae.init_sample=1000",
    "attribution.n_images=10",
    "attribution.n_reference=10",
    "attribution.ig_max_steps=20",
    "circuit.select=top_k",
    "circuit.top_k=2",
    "circuit.n_eval=10",
    "circuit.curve_points=3",
    "circuit.n_random=1",
    "mis.n_tasks=2",
    "mis.n_refs=2",
    "sae.checkpoints=2",
    "execution.device=cpu",
    "execution.batch_size=10",
    "execution.grad_batch_size=10",
]

# Ten ImageNet classes (WordNet id, name), flamingo among them as in the thesis.
CLASSES = [("n01440764", "tench"), ("n01530575", "brambling"), ("n01614925", "bald eagle"),
           ("n01641577", "bullfrog"), ("n01644373", "tree frog"), ("n01665541", "leatherback turtle"),
           ("n02007558", "flamingo"), ("n02085620", "Chihuahua"), ("n02099601", "golden retriever"),
           ("n02123045", "tabby")]
# Flamingo has more images than the others, so the counts of images a stage used tell which class they were of.
FLAMINGO_TRAIN, FLAMINGO_VAL, OTHER_TRAIN, OTHER_VAL = 5, 3, 3, 1
N_VAL = FLAMINGO_VAL + (len(CLASSES) - 1) * OTHER_VAL
TINY_TRAIN, TINY_VAL = 4, 2  # Tiny-ImageNet: per class


def class_image(k: int, i: int, side: int, rng: np.random.Generator) -> np.ndarray:
    "An RGB image of class `k`: a class colour, stripes at a class angle, noise; `uint8 (side, side, 3)`."
    colour = np.array([(k * 0.37) % 1, (k * 0.61 + 0.3) % 1, (k * 0.83 + 0.6) % 1])
    ys, xs = np.mgrid[0:side, 0:side] / side
    angle = np.pi * k / len(CLASSES)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 6 * (xs * np.cos(angle) + ys * np.sin(angle)) + i)
    img = 0.6 * colour + 0.3 * stripes[..., None] + 0.1 * rng.random((side, side, 3))
    return (255 * np.clip(img, 0, 1)).astype(np.uint8)


def imagenet_folder(root, side: int = GOOGLENET_SIDE * 256 // 224):
    """ImageNet in ImageFolder layout: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG, and LOC_synset_mapping.txt
    (the Kaggle ILSVRC file that names the WordNet ids)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for k, (wnid, _) in enumerate(CLASSES):
        counts = (FLAMINGO_TRAIN, FLAMINGO_VAL) if wnid == "n02007558" else (OTHER_TRAIN, OTHER_VAL)
        for split, n in zip(("train", "val"), counts):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(class_image(k, i, side, rng)).save(root / split / wnid / f"{wnid}_{split}_{i}.JPEG", quality=90)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}\n" for w, n in CLASSES))
    return root


def tinyimagenet_folder(root, side: int = 64):
    """Tiny-ImageNet's layout: train/<wnid>/images/*.JPEG, val/images/*.JPEG with val/val_annotations.txt, words.txt."""
    from PIL import Image
    rng = np.random.default_rng(1)
    (root / "val" / "images").mkdir(parents=True)
    ann = []
    for k, (wnid, _) in enumerate(CLASSES):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for i in range(TINY_TRAIN):
            Image.fromarray(class_image(k, i, side, rng)).save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        for i in range(TINY_VAL):
            name = f"val_{k}_{i}.JPEG"
            Image.fromarray(class_image(k, 10 + i, side, rng)).save(root / "val" / "images" / name)
            ann.append(f"{name}\t{wnid}\t0\t0\t{side - 1}\t{side - 1}\n")
    (root / "val" / "val_annotations.txt").write_text("".join(ann))
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in CLASSES))
    return root


def random_googlenet_state(folder) -> dict:
    """A randomly initialised torchvision GoogLeNet's state dict in the format of torchvision's ImageNet file (the bare
    network with its auxiliary heads), made to see the generated classes: its activations would fade to nothing
    through the random layers, so the batch-norm statistics are set from the training images (in the network's
    input range [-1, 1]), and the first ten of its 1000 outputs read the classes out of the pooled features
    (ridge regression on those images)."""
    from PIL import Image
    from torchvision.models import googlenet
    from torchvision.transforms.functional import center_crop, to_tensor
    wnids = sorted(p.name for p in (folder / "train").iterdir())
    files = sorted((folder / "train").glob("*/*.JPEG"))
    x = torch.stack([center_crop(to_tensor(Image.open(f).convert("RGB")), GOOGLENET_SIDE) for f in files]) * 2 - 1  # as the preset loads them
    y = torch.tensor([wnids.index(f.parent.name) for f in files])
    torch.manual_seed(0)
    net = googlenet(weights=None, aux_logits=True, init_weights=True)
    for bn in [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
        bn.reset_running_stats()
        bn.momentum = None  # one batch: its statistics exactly
    pooled = []
    hook = net.avgpool.register_forward_hook(lambda m, i, o: pooled.append(o.flatten(1)))
    with torch.no_grad():
        net.train()(x)
        net.eval()(x)
    hook.remove()
    f = torch.cat([pooled[-1], torch.ones(len(x), 1)], 1)
    target = 5 * torch.nn.functional.one_hot(y, len(wnids)).float()
    w = torch.linalg.solve(f.T @ f + 1e-2 * torch.eye(f.shape[1]), f.T @ target)  # (1025, classes)
    with torch.no_grad():
        net.fc.weight.zero_(); net.fc.bias.zero_()
        net.fc.weight[:len(wnids)] = w[:-1].T
        net.fc.bias[:len(wnids)] = w[-1]
    return net.state_dict()


def run_preset(preset: str, settings: list[str], runs, env=None):
    "`sfc-vision run configs/PRESET --set …` to completion; the run's folder and metrics."
    args = [x for s in settings for x in ("--set", s)]
    r = run_cli("run", CONFIGS / preset, "--runs", runs, *args, env={"OMP_NUM_THREADS": "2", **(env or {})}, timeout=1800)
    assert r.returncode == 0, r.stderr[-5000:]
    cfg = load_config(CONFIGS / preset, settings)
    folder = run_folder(runs, run_name(cfg))
    return cfg, folder, read_json(folder / "metrics.json")


def check_complete(folder, metrics, layers, n_test):
    """Every stage ran, every study figure exists, and each layer has its SAE, its evaluation on all `n_test`
    validation images, and its MIS."""
    assert metrics["run"]["status"] == "complete" and metrics["run"]["error"] is None
    assert list(metrics["stages"]) == list(STAGES)
    for stage in STAGES:
        assert (folder / "artifacts" / stage / "stage.json").exists(), stage
    assert list(metrics["saes"]) == list(metrics["sae_eval"]) == list(metrics["mis"]["layers"]) == layers
    for layer in layers:
        assert 0 <= metrics["mis"]["layers"][layer]["sae"]["median"] <= 1
        ev = metrics["sae_eval"][layer]
        # the same images as the model stage's measurement, through the classifier as each later stage loads it
        assert ev["n_images"] == n_test
        assert ev["clean_accuracy"] == metrics["model"]["accuracy"]
        assert ev["clean_ce"] == pytest.approx(metrics["model"]["loss"], rel=1e-4)
    figures = {p.stem for p in (folder / "figures").glob("*.png")}
    want = {"ie_histograms_sae", "ie_histograms_neurons", "ie_median", "nodes_vs_threshold", "faithfulness_curves",
            "circuit", "circuit_density", "mis_by_layer", "mis_over_epochs", "sae_over_training",
            *(f"sae_{kind}_{layer}" for kind in ("frequency", "training") for layer in layers)}
    assert want <= figures, sorted(want - figures)
    return figures
