"""Model behaviour beyond parity: batch invariance, ablation switches, configuration errors."""

import dataclasses

import pytest
import torch

import rs2sam2
from rs2sam2.config import FusionConfig
from rs2sam2.models.beit3 import Beit3Encoder, sincos_2d


def nano(seed=0, **fusion):
    torch.manual_seed(seed)
    cfg = rs2sam2.get_config("nano", fusion=FusionConfig(adapter_heads=2, mpg_heads=4, guidance_heads=4, **fusion))
    return rs2sam2.build_model(cfg)


def inputs(model, texts_lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    b = len(texts_lengths)
    images = torch.randn(b, 3, cfg.image_size, cfg.image_size, generator=g)
    evf = torch.randn(b, 3, cfg.beit3.img_size, cfg.beit3.img_size, generator=g)
    L = max(texts_lengths)
    ids = torch.full((b, L), 3, dtype=torch.long)
    for i, n in enumerate(texts_lengths):
        ids[i, :n] = torch.randint(4, cfg.beit3.vocab_size, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 0, 2
    return images, evf, ids, ids != 3


def test_batch_invariance():
    """Each sample of a padded batch gets the outputs it gets alone (padding masked everywhere)."""
    model = nano().eval()
    images, evf, ids, mask = inputs(model, [5, 11, 8])
    with torch.no_grad():
        batched = model(images, evf, ids, mask)
        for i, n in enumerate([5, 11, 8]):
            alone = model(images[i : i + 1], evf[i : i + 1], ids[i : i + 1, :n], mask[i : i + 1, :n])
            for key in ("logits", "low_res_logits", "mask_prompt", "boundary_weight", "iou_scores"):
                torch.testing.assert_close(batched[key][i : i + 1], alone[key], atol=1e-4, rtol=0, msg=key)


def test_pointing_logits_are_the_forward_pass_prior_logits():
    """``pointing_logits`` (the union encoder and the MPG alone, as the grounding warm-up runs them) gives
    exactly the MPG scores of the whole forward pass."""
    model = nano().eval()
    images, evf, ids, mask = inputs(model, [5, 11])
    with torch.no_grad():
        assert torch.equal(model.pointing_logits(evf, ids, mask), model(images, evf, ids, mask).prior_logits)


def test_unknown_tokens_masked_only_in_union_encoder():
    """Published rule: an unknown token (id 3) inside the text is masked in BEiT-3 only; BHFM and the
    decoder still see its position, so the output differs from dropping the token."""
    model = nano().eval()
    images, evf, ids, _ = inputs(model, [9])
    ids[0, 4] = 3
    with torch.no_grad():
        out = model(images, evf, ids, ids != 3)
        dropped = model(images, evf, torch.cat([ids[:, :4], ids[:, 5:]], 1), torch.cat([ids[:, :4], ids[:, 5:]], 1) != 3)
    assert not torch.allclose(out.logits, dropped.logits)


ABLATIONS = {
    "bi": ({}, set()),
    "uni": ({"bhfm": "uni"}, {"attend_image", "text_out"}),
    "linear": ({"bhfm": "linear"}, {"attend_image", "text_out", "attend_text", "text_in"}),
    "off": ({"bhfm": "off"}, {"space_adapter", "mlp_adapter"}),
    "no-mpg": ({"mpg": False}, {"mpg"}),
    "no-guidance": ({"text_guidance": False}, {"text_guidance"}),
    "no-sparse": ({"sparse_prompt": False}, {"sparse_prompt"}),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_switch(name):
    fusion, removed = ABLATIONS[name]
    full = {k for k, _ in nano().named_parameters()}
    model = nano(**fusion).train()
    names = {k for k, _ in model.named_parameters()}
    gone = full - names
    assert names <= full
    assert {part for k in gone for part in k.split(".")} >= removed
    assert all(any(r in k.split(".") for r in removed) for k in gone)
    assert bool(gone) == bool(removed)
    images, evf, ids, mask = inputs(model, [6, 4])
    out = model(images, evf, ids, mask)
    (out.logits.mean() + out.boundary_weight.mean()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert (out.mask_prompt is None) == (name == "no-mpg")


def test_sincos_position_init_orders_the_patches_and_leaves_the_rest_alone():
    """``beit3.pos_embed_init="sincos"`` starts the patch position rows as a 2-D sine-cosine code of
    unit RMS (neighbouring patches closer than distant ones); every other weight, the CLS row included,
    starts as with the default, so the option changes nothing but that table."""
    base = rs2sam2.get_config("nano")
    cfg = dataclasses.replace(base, beit3=dataclasses.replace(base.beit3, pos_embed_init="sincos"))
    torch.manual_seed(0)
    normal = rs2sam2.build_model(base).state_dict()
    torch.manual_seed(0)
    sincos = rs2sam2.build_model(cfg).state_dict()
    grid, o = cfg.beit3.grid_size, Beit3Encoder.POS_OFFSET + 1
    table = sincos["union_encoder.pos_embed_vision.weight"]
    code = table[o : o + grid * grid]
    assert code.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=1e-5)
    dist = torch.cdist(code, code).reshape(grid, grid, grid, grid)
    assert dist[0, 0, 0, 1] < dist[0, 0, 0, 2] < dist[0, 0, 0, grid - 1]  # along a row
    assert dist[0, 0, 1, 0] < dist[0, 0, 2, 0] < dist[0, 0, grid - 1, 0]  # down a column
    assert torch.equal(table[:o], normal["union_encoder.pos_embed_vision.weight"][:o])
    assert all(torch.equal(v, normal[k]) for k, v in sincos.items() if k != "union_encoder.pos_embed_vision.weight")
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 130)


def test_presets_and_sizes():
    for name in rs2sam2.PRESET_NAMES:
        cfg = rs2sam2.get_config(name)
        assert cfg.mask_size == cfg.image_size // 4
    with pytest.raises(KeyError, match="unknown preset"):
        rs2sam2.get_config("huge")
    with pytest.raises(ValueError, match="bhfm"):
        FusionConfig(bhfm="sideways")
    with pytest.raises(ValueError, match="image_size"):
        dataclasses.replace(rs2sam2.get_config("nano"), image_size=250)
    beit = rs2sam2.get_config("nano").beit3  # the token limit is capped by the position table
    assert beit.text_len() == beit.max_text_len == beit.max_text_positions - 2
    assert beit.text_len(8) == 8 and beit.text_len(10**6) == beit.max_text_len


def test_input_errors():
    model = nano().eval()
    images, evf, ids, mask = inputs(model, [5])
    with pytest.raises(ValueError, match="images must be 256x256"):
        model(images[..., :128, :128], evf, ids, mask)
    with pytest.raises(ValueError, match="position table"):
        model(images, evf, torch.zeros(1, 80, dtype=torch.long), torch.ones(1, 80, dtype=torch.bool))
    with pytest.raises(ValueError, match="vocabulary"):
        model(images, evf, torch.full((1, 4), 10**6), mask[:, :4])


def test_position_embedding_cache_follows_the_weights():
    """The interpolated Hiera position embedding is cached for inference; editing or loading the
    weights must invalidate it, and training mode must not use it."""
    model = nano().eval()
    images, evf, ids, mask = inputs(model, [5])
    with torch.inference_mode():
        first = model(images, evf, ids, mask).logits
    with torch.no_grad():
        model.image_encoder.trunk.pos_embed.add_(0.5)
    with torch.inference_mode():
        second = model(images, evf, ids, mask).logits
    assert not torch.allclose(first, second)
    fresh = nano()
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(fresh.eval()(images, evf, ids, mask).logits, second)
    model.train()
    out = model(images, evf, ids, mask)
    out.logits.mean().backward()
    assert model.image_encoder.trunk.pos_embed.grad is not None
