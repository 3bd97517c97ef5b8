"""The `timm_vit` adapter on a tiny random-weight timm ViT with layer scale and two register tokens: the exactness tests
of the torchvision ViT sites hold at its `resid`, `attn` and `mlp` sites — the splice identity, AtP against exact
patching, and edges against autograd's Jacobian of the block's own attention and MLP branches — and its register
tokens are prefix tokens, so token roles and the patch grid leave them out."""
import pytest
import torch

pytest.importorskip("timm")  # in the dev extra: CI runs these

from sfc_vision.activations import read_layers, token_positions
from sfc_vision.attribution import NodeLayout, make_metric, node_effects
from sfc_vision.data import TensorImageSet
from sfc_vision.edges import edge_effects
from sfc_vision.interpret import token_grid
from sfc_vision.models import ModelConfig, build_model
from sfc_vision.sae import IdentityDictionary, ReLUSAE
from sfc_vision.splice import Patch, Splice, mean_patches

SITES = ["resid_0", "attn_1", "mlp_1", "resid_1"]
DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def tiny():
    "vit_tiny_patch16_224 shrunk: 32 px digits in 8 px patches (16 tokens), the class token, 2 registers, width 32."
    cfg = ModelConfig(arch="timm_vit", timm_name="vit_tiny_patch16_224",
                      timm_args={"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0,
                                 "reg_tokens": 2, "init_values": 0.5})
    model = build_model(cfg, (1, 32, 32), 10).eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(model.net.head.weight, std=0.5)  # a head with some gradient
    x = torch.rand(4, 1, 32, 32)
    images = TensorImageSet((x * 255).round().to(torch.uint8), torch.tensor([3, 1, 4, 1]), DIGITS)
    return model, images


def test_register_tokens_are_prefix_tokens(tiny):
    model, images = tiny
    x = next(images.batches(4))[0]
    with torch.no_grad(), read_layers(model, ["resid_0"]) as acts:
        model(x)
    t = acts["resid_0"].shape[1]
    assert (model.prefix_tokens, t) == (3, 19)  # class token, 2 registers, 4×4 patches
    assert token_positions(model, t, "patch").tolist() == list(range(3, 19))
    assert token_positions(model, t, "cls").tolist() == [0]
    # token 0 is the class token: before the blocks it is cls_token + its position embedding
    with torch.no_grad(), read_layers(model, ["embed"]) as emb:
        model(x)
    net = model.net
    torch.testing.assert_close(emb["embed"][:, 0], (net.cls_token + net.pos_embed[:, :1])[0].expand(4, -1))
    torch.testing.assert_close(emb["embed"][:, 1:3], (net.reg_token + net.pos_embed[:, 1:3])[0].expand(4, -1, -1))
    grid, lead = token_grid(acts["resid_0"].transpose(1, 2), model.prefix_tokens)
    assert grid.shape == (4, 32, 4, 4) and lead.shape == (4, 32, 3)


def test_splice_identity_atp_and_edges_at_timm_sites(tiny):
    model, images = tiny
    x, y = next(images.batches(4))[:2]
    with torch.no_grad():
        want = model(x)
    # splice identity: neurons (identity dictionaries) and random SAEs with their error terms give the model's output
    for make in (IdentityDictionary, lambda d: ReLUSAE(d, 2 * d)):
        sp = Splice(model, {s: make(32) for s in SITES})
        sp.probe(x)
        assert [sp.is_cut(s) for s in sp.order] == [True, False, False, True]
        with torch.no_grad(), sp.trace():
            torch.testing.assert_close(model(x), want, atol=1e-5 * want.abs().max().item(), rtol=0)

    # AtP against exact patching, with a patch near the image's own values (first order: they agree)
    one = images.subset(torch.arange(1))
    logit = make_metric("logit", DIGITS)
    own = mean_patches(sp, one, progress=False)
    gen = torch.Generator().manual_seed(0)
    near = {s: Patch(p.f + 3e-4 * torch.rand(p.f.shape, generator=gen), p.eps + 3e-4 * torch.randn(p.eps.shape, generator=gen))
            for s, p in own.items()}
    for agg in ("sum", "cls"):
        atp = node_effects(sp, one, logit, near, method="atp", error_method="same", aggregation=agg, progress=False)
        exact = node_effects(sp, one, logit, near, method="exact", aggregation=agg, progress=False)
        for s in sp.order:
            assert exact.mean[s].abs().max() > 1e-5, (agg, s)
            torch.testing.assert_close(atp.mean[s], exact.mean[s], atol=2e-2 * exact.mean[s].abs().max().item(), rtol=0)
        assert NodeLayout.of(sp, sp.order[0], "cls").cls == 0

    # edges between neurons against autograd's Jacobian of block 1's own branches, the site between held
    sp = Splice(model, {s: IdentityDictionary(32) for s in SITES})
    patches = mean_patches(sp, images, progress=False)
    ce = make_metric("ce", DIGITS)
    edges = edge_effects(sp, images, ce, patches, progress=False)
    r0, a1, m1, _ = (model.resolve(s) for s in SITES)
    with torch.no_grad(), read_layers(model, SITES) as clean:
        model(x)
    outs = {}
    keep = lambda s: lambda m, i, o: (o.retain_grad(), outs.__setitem__(s, o))[1]
    handles = [model.layer(s).register_forward_hook(keep(s)) for s in (a1, m1)]
    try:
        with torch.enable_grad():
            ce(model(x), y).sum().backward()
    finally:
        for h in handles:
            h.remove()
    grads = {s: outs[s].grad for s in (a1, m1)}
    blk = model.net.blocks[1]
    branch = {a1: lambda r, b: blk.drop_path1(blk.ls1(blk.attn(blk.norm1(r)))),
              m1: lambda r, b: blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(r + clean["attn_1"][b:b + 1]))))}  # attn_1 held
    delta = patches[r0].f - clean["resid_0"]  # (B, T, D): the mean patch minus each image's value
    for d, fn in branch.items():
        torch.testing.assert_close(torch.cat([fn(clean["resid_0"][b:b + 1], b) for b in range(len(x))]),
                                   clean[SITES[[a1, m1].index(d) + 1]], atol=1e-5, rtol=0)
        jac = torch.stack([torch.autograd.functional.jacobian(lambda r: fn(r, b), clean["resid_0"][b:b + 1],
                                                              vectorize=True)[0, :, :, 0]
                           for b in range(len(x))])  # per image (images do not mix): (B, T, D_out, T, D_in)
        want_w = torch.einsum("bqj,bqjki,bki->ji", grads[d], jac, delta) / len(x)
        got = edges[(r0, d)][:-1, :-1]
        assert want_w.abs().max() > 1e-4
        torch.testing.assert_close(got, want_w, atol=1e-4 * want_w.abs().max().item(), rtol=0)


def test_feature_pages_show_the_register_tokens(tiny):
    """A unit's profile keeps the class token's and each register token's value on its top images (a unit that fires
    on a register alone shows no patch on the grid), they survive storing, and the page's tiles carry them."""
    from sfc_vision.interpret import UnitProfiles, site_features, unit_profiles
    from sfc_vision.report import node_media
    model, images = tiny
    neurons, units = IdentityDictionary(32), [0, 5, 9]
    prof = unit_profiles(model, "resid_1", neurons, images, units=units, k=2, device="cpu")
    x = next(images.batches(4))[0]
    with torch.no_grad():
        f = site_features(model, model.resolve("resid_1"), neurons, x)[:, units]  # (B, U, T): class, 2 registers, patches
    for j in range(len(units)):
        on_top = f[prof.top_index[j], j]                                              # (k, T)
        torch.testing.assert_close(prof.top_score[j], on_top.amax(1))               # max over every token
        torch.testing.assert_close(prof.top_cls[j], on_top[:, 0])
        torch.testing.assert_close(prof.top_registers[j], on_top[:, 1:3])
    assert prof.top_registers.shape == (3, 2, 2)
    back = UnitProfiles.from_tensors(*prof.to_tensors())
    assert torch.equal(back.top_registers, prof.top_registers) and torch.equal(back.top_cls, prof.top_cls)
    media = node_media(prof, {}, 5, {i: images.images_u8[i] for i in range(4)}, DIGITS,
                       {i: int(images.labels[i]) for i in range(4)})
    assert [t["registers"] for t in media["top"]] == prof.top_registers[1].tolist()
    assert [t["cls"] for t in media["top"]] == prof.top_cls[1].tolist()
