"""SAE training throughput: our trainer vs a minimal plain-PyTorch loop of the same math, and vs a peer library.

All contenders train the same ReLU + L1 SAE (Bricken et al.) on the same activation cache with the
same batch size and number of passes over it (our budget in steps is set to that many passes), and
each reads the cache itself:

- **ours**: `train_saes` (cache preloaded to the device, normalisation scale and geometric-median
  `b_dec` from a sample, learning-rate warm-up/decay, dead-latent and L0 statistics on the device,
  a checkpoint at the end);
- **minimal loop**: the same math written plainly — data on the device, a permutation per epoch,
  forward, loss, backward, decoder-gradient projection, Adam step, decoder renormalisation (goal:
  ours ≥ 0.9× its throughput);
- **overcomplete 0.3.0** `train_sae` over a DataLoader of device tensors, its `SAE` (linear encoder +
  ReLU, l2-normalised dictionary) with `mse_l1` (goal: ours ≥ 1×). It is optional: install it with
  `pip install overcomplete==0.3.0` (not a project dependency); without it that row is skipped, saying so.

Sizes: on a GPU, 512-dim activations (ResNet-18-small `layer4` on generated shapes), expansion 8,
batch 4096; on the CPU, the default CNN's `pool2` on mnist5k (32 dims), expansion 8, batch 4096.
Throughput ratios equal time ratios: every contender trains the same number of vectors.
"""
from __future__ import annotations

import contextlib
import io
import math
import shutil
import tempfile
from pathlib import Path

import torch

from bench.harness import Row, compare
from sfc_vision.activations import ActivationCache, CaptureConfig, cache_activations
from sfc_vision.data import DataConfig, load_data
from sfc_vision.models import ModelConfig, build_model
from sfc_vision.sae import SAEConfig
from sfc_vision.sae_train import train_saes


def _activations(tmp: Path, device: torch.device, quick: bool) -> ActivationCache:
    "The benchmark's activation cache: 512-dim on a GPU, 32-dim on the CPU (random-weight models suffice)."
    if device.type == "cuda":
        data = load_data(DataConfig(name="shapes", shapes_n=5000 if quick else 15000))
        model = build_model(ModelConfig(arch="resnet18_small"), data.image_shape, data.num_classes)
        layer = "layer4"
    else:
        data = load_data(DataConfig(limit_train=1000 if quick else None))
        model = build_model(ModelConfig(), data.image_shape, data.num_classes)
        layer = "pool2"
    cache_activations(model, data.train, CaptureConfig(layers=(layer,)), tmp / "acts", progress=False, device=device)
    return ActivationCache(tmp / "acts" / layer)


def _minimal_loop(cache: ActivationCache, cfg: SAEConfig, device: torch.device) -> None:
    "ReLU + L1 SAE, unit-norm decoder, Adam with warm-up: the trainer's math and nothing else."
    x_all = cache.load_all(device, dtype=torch.float16)
    n, d = x_all.shape
    width = cfg.width(d)
    scale = math.sqrt(d / x_all[:cfg.init_sample].float().pow(2).sum(1).mean().item())
    w = torch.randn(width, d, device=device)
    W_dec = torch.nn.Parameter(w / w.norm(dim=1, keepdim=True))
    W_enc = torch.nn.Parameter(W_dec.detach().t().clone())
    b_enc = torch.nn.Parameter(torch.zeros(width, device=device))
    b_dec = torch.nn.Parameter(torch.zeros(d, device=device))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=cfg.lr)
    step, warmup = 0, max(1, cfg.warmup_steps(cfg.lr_warmup))
    for epoch in range(math.ceil(cfg.steps / math.ceil(n / cfg.batch_size))):
        perm = torch.randperm(n, device=device)
        for start in range(0, n, cfg.batch_size):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / warmup)
            x = x_all[perm[start:start + cfg.batch_size]].float() * scale
            f = torch.relu((x - b_dec) @ W_enc + b_enc)
            loss = (x - (f @ W_dec + b_dec)).pow(2).sum(-1).mean() + cfg.l1_coeff * f.sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                W_dec.grad -= W_dec * (W_dec.grad * W_dec).sum(1, keepdim=True)
            opt.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True)
            step += 1
    loss.item()


def _import_overcomplete():
    "overcomplete 0.3.0, or None; it calls matplotlib's removed `cm.get_cmap` at import, so alias it first."
    try:
        import matplotlib
        import matplotlib.cm
        if not hasattr(matplotlib.cm, "get_cmap"):
            matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
        import overcomplete.sae as oc_sae
        return oc_sae
    except ImportError:
        return None


def _overcomplete_loop(oc_sae, cache: ActivationCache, cfg: SAEConfig, device: torch.device) -> None:
    "overcomplete's own training loop on the same data (its defaults: monitoring=1, clip_grad=1.0)."
    x_all = cache.load_all(device, dtype=torch.float16).float()
    n, d = x_all.shape
    x_all *= math.sqrt(d / x_all[:cfg.init_sample].pow(2).sum(1).mean().item())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_all), batch_size=cfg.batch_size, shuffle=True)
    model = oc_sae.SAE(d, cfg.width(d), device=str(device))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    criterion = lambda *a: oc_sae.losses.mse_l1(*a, penalty=cfg.l1_coeff)
    with contextlib.redirect_stdout(io.StringIO()):   # it prints a line per epoch
        oc_sae.train_sae(model, loader, criterion, opt, nb_epochs=cfg.steps // len(loader), device=str(device))


def run(quick: bool = False) -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = Path(tempfile.mkdtemp())
    rows = []
    try:
        torch.manual_seed(0)
        cache = _activations(tmp, device, quick)
        n, d = cache.n_vectors, cache.d
        steps = math.ceil(n / 4096)
        epochs = (10 if quick else 30) if device.type == "cuda" else (2 if quick else 4)
        # b_dec starts at 0 as in the minimal loop: the geometric-median start (the default) is a one-time cost
        # of its own (≈ 0.3 s for 65536 vectors on 2 CPU cores), not part of the training loop compared here
        cfg = SAEConfig(arch="relu", expansion=8, batch_size=4096, steps=epochs * steps, checkpoints=epochs,
                        lr_warmup=min(50, steps // 2) / (epochs * steps), b_dec_init="zero")
        runs = iter(range(10**6))

        def ours(c=cfg):
            out = tmp / f"ours_{next(runs)}"
            train_saes(cache, [c], [out], progress=False, log_every=100, device=device)
            shutil.rmtree(out)

        what = f"relu SAE {d}→{cfg.width(d)}, batch {cfg.batch_size}"
        repeats = 3 if quick else 5
        row = compare(f"SAE training, ours vs minimal loop ({what}, {epochs} epochs of {n} vectors)",
                      ours, lambda: _minimal_loop(cache, cfg, device), goal=0.9, ratio_kind="speed",
                      repeats=repeats, warmup=1)
        row.note = (f"throughput: ours {n * epochs / row.ours_s / 1e6:.3f} M vectors/s, minimal loop "
                    f"{n * epochs / row.ref_s / 1e6:.3f} M vectors/s ({device.type})")
        rows.append(row)

        oc_sae = _import_overcomplete()
        if oc_sae is None:
            print("sae_training: overcomplete is not installed (pip install overcomplete==0.3.0); "
                  "the peer-library comparison is skipped")
        else:
            peer_epochs = max(1, epochs // 10)
            peer_cfg = cfg.replace(steps=peer_epochs * steps, checkpoints=peer_epochs)
            row = compare(f"SAE training, ours vs overcomplete 0.3.0 train_sae ({what}, {peer_epochs} epochs of {n} vectors)",
                          lambda: ours(peer_cfg), lambda: _overcomplete_loop(oc_sae, cache, peer_cfg, device),
                          goal=1.0, ratio_kind="speed", repeats=3, warmup=1)
            row.note = (f"throughput: ours {n * peer_epochs / row.ours_s / 1e6:.3f} M vectors/s, overcomplete "
                        f"{n * peer_epochs / row.ref_s / 1e6:.3f} M vectors/s ({device.type})")
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
