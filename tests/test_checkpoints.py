"""Loading released / official / our checkpoints, and every way loading must fail loudly."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import rs2sam2
from parity_weights import FIXTURES
from rs2sam2.checkpoints import (
    IGNORED_PUBLISHED_PREFIXES,
    CheckpointError,
    infer_config,
    load_beit3_checkpoint,
    load_pretrained,
    load_sam2_checkpoint,
    locate,
    read_state_dict,
)


def _outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    ids = torch.tensor([[0, 17, 23, 9, 2]])
    with torch.no_grad():
        return model(
            torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=g),
            torch.randn(1, 3, cfg.beit3.img_size, cfg.beit3.img_size, generator=g),
            ids,
            ids != 3,
        ).logits


def test_save_and_from_pretrained_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = rs2sam2.build_model("nano").eval()
    spm = FIXTURES / "tokenizer" / "test_xlmr.model"
    rs2sam2.save_pretrained(model, tmp_path / "ckpt", tokenizer_path=spm)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "README.md", "config.json", "model.safetensors", "tokenizer.model"]
    again = rs2sam2.load_pretrained(tmp_path / "ckpt").eval()
    assert again.config == model.config
    torch.testing.assert_close(_outputs(again), _outputs(model), atol=0, rtol=0)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_released_folder_infers_preset(tmp_path, tiny_published_state_dict, tiny_parity_model, fmt):
    """A released folder (HF config.json without the SAM2 size, weights, sentencepiece model)."""
    folder = tmp_path / "released"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "evf", "hidden_size": 1024, "out_dim": 256}))
    (folder / "sentencepiece.bpe.model").write_bytes((FIXTURES / "tokenizer" / "test_xlmr.model").read_bytes())
    if fmt == "safetensors":
        save_file(tiny_published_state_dict, str(folder / "model.safetensors"))
    else:
        torch.save(tiny_published_state_dict, folder / "pytorch_model.bin")
    model = load_pretrained(folder).eval()
    assert model.config.name == "tiny-parity"
    assert model.config.hiera == rs2sam2.get_config("tiny-parity").hiera
    for (k, v), (k2, v2) in zip(model.state_dict().items(), tiny_parity_model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert rs2sam2.checkpoints.find_tokenizer(folder).name == "sentencepiece.bpe.model"


def test_infer_paper_config_from_manifest_shapes():
    entries = json.loads((FIXTURES / "paper_manifest.json").read_text())
    shapes = {e["key"]: torch.empty(e["shape"], device="meta") for e in entries}
    cfg = infer_config(shapes)
    assert cfg.name == "paper"
    assert cfg.hiera == rs2sam2.get_config("paper").hiera and cfg.beit3 == rs2sam2.get_config("paper").beit3
    assert len(entries) == 2853


def test_ignored_keys_are_exactly_the_documented_ones(tiny_published_state_dict):
    model = rs2sam2.build_model("tiny-parity")
    report = rs2sam2.load_official_state_dict(model, tiny_published_state_dict)
    assert report.ignored and all(k.startswith(IGNORED_PUBLISHED_PREFIXES) for k in report.ignored)
    assert {k.split(".")[1] if k.startswith("visual_model.") else k.split(".")[0] for k in report.ignored} == {
        "memory_attention", "memory_encoder", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
        "mask_downsample", "obj_ptr_proj", "meo_linear", "mm_extractor",
    }


def test_official_sam2_and_beit3_initialise_their_parts(tmp_path, tiny_published_state_dict):
    sd = tiny_published_state_dict
    # an official SAM2 checkpoint has no RS2-SAM2 additions (adapters, decoder text guidance)
    sam2 = {
        k[len("visual_model."):]: v for k, v in sd.items()
        if k.startswith("visual_model.") and "Adapter" not in k and "vlfusion" not in k
    }
    beit3 = {k[len("mm_extractor."):]: v for k, v in sd.items() if k.startswith("mm_extractor.")}
    beit3["head.weight"] = torch.zeros(3, 1024)  # a fine-tuned task head: reported, not loaded
    torch.save({"model": sam2}, tmp_path / "sam2_hiera_t.pt")
    torch.save({"model": beit3}, tmp_path / "beit3.pth")

    model, (r_sam, r_beit) = rs2sam2.init_from_official(
        "tiny-parity", sam2=tmp_path / "sam2_hiera_t.pt", beit3=tmp_path / "beit3.pth"
    )
    ours = model.state_dict()
    torch.testing.assert_close(ours["image_encoder.trunk.blocks.3.attn.qkv.weight"],
                               sd["visual_model.image_encoder.trunk.blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(ours["union_encoder.layers.1.ffn.text.fc2.weight"],
                               sd["mm_extractor.beit3.encoder.layers.1.ffn.B.fc2.weight"])
    new_sam = set(r_sam.newly_initialised)
    assert any("space_adapter" in k for k in new_sam) and any("text_guidance" in k for k in new_sam)
    assert not any(k.startswith(("image_encoder.neck", "prompt_encoder")) for k in new_sam)
    assert "head.weight" in r_beit.ignored
    assert not any(k.startswith("union_encoder.") for k in r_beit.newly_initialised)
    with pytest.raises(CheckpointError, match="not a SAM2 checkpoint"):
        load_sam2_checkpoint(model, tmp_path / "beit3.pth")
    with pytest.raises(CheckpointError, match="not a BEiT-3 checkpoint"):
        load_beit3_checkpoint(model, tmp_path / "sam2_hiera_t.pt")


def test_errors_name_the_keys(tiny_published_state_dict):
    model = rs2sam2.build_model("tiny-parity")
    extra = dict(tiny_published_state_dict, **{"visual_model.surprise": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys.*visual_model.surprise|unexpected keys.*surprise"):
        rs2sam2.load_official_state_dict(model, extra)
    missing = {k: v for k, v in tiny_published_state_dict.items() if k != "text2one_linear.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): boundary_head.bias"):
        rs2sam2.load_official_state_dict(model, missing)
    # wrong preset: tiny-parity weights into the paper-sized SAM2 / nano model
    with pytest.raises(CheckpointError, match="wrongly shaped keys"):
        rs2sam2.load_official_state_dict(rs2sam2.build_model("nano"), tiny_published_state_dict)


def test_truncated_files(tmp_path):
    sd = rs2sam2.build_model("nano").state_dict()
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save(sd, tmp_path / "m.bin")
    for name in ("m.safetensors", "m.bin"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=f"cut_{name}"):
            read_state_dict(tmp_path / f"cut_{name}")
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.bin")
    with pytest.raises(CheckpointError, match="no weights found"):
        load_pretrained(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EVIL_MARKER', '/tmp/rs2sam2_evil_marker')}",))


def test_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"model": {"w": _Evil()}}, f)
    torch.save({"model": {"w": _Evil()}}, tmp_path / "evil2.pt")
    for name in ("evil.bin", "evil2.pt"):
        with pytest.raises(CheckpointError, match="weights_only"):
            read_state_dict(tmp_path / name)
    assert not marker.exists()


def test_locate_resolves_files_folders_and_run_folders(tmp_path):
    torch.manual_seed(0)
    model = rs2sam2.build_model("nano").eval()
    spm = FIXTURES / "tokenizer" / "test_xlmr.model"
    run = tmp_path / "run"
    rs2sam2.save_pretrained(model, run / "checkpoints" / "last")
    (run / "tokenizer.model").write_bytes(spm.read_bytes())

    found = locate(run)  # only checkpoints/last exists
    assert found.path == run / "checkpoints" / "last" and found.weights.name == "model.safetensors"
    assert found.tokenizer == run / "tokenizer.model" and found.config == model.config
    rs2sam2.save_pretrained(model, run / "checkpoints" / "best", tokenizer_path=spm)
    found = locate(run)  # best before last; its own tokenizer before the run's
    assert found.path == run / "checkpoints" / "best"
    assert found.tokenizer == run / "checkpoints" / "best" / "tokenizer.model"
    torch.testing.assert_close(_outputs(load_pretrained(run).eval()), _outputs(model), atol=0, rtol=0)

    weights = locate(run / "checkpoints" / "best" / "model.safetensors")  # a file: config.json beside it
    assert weights.weights == weights.path and weights.config == model.config and weights.tokenizer is not None
    assert locate(run).tokenizer_file(spm) == spm
    with pytest.raises(CheckpointError, match="tokenizer not found"):
        locate(run).tokenizer_file(tmp_path / "nope.model")

    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="without a saved checkpoint"):
        locate(tmp_path / "empty_run")
    bare = tmp_path / "bare"
    rs2sam2.save_pretrained(model, bare)
    with pytest.raises(CheckpointError, match=r"no tokenizer found.*looked for tokenizer\.model"):
        locate(bare).tokenizer_file()


def _write_shards(folder, sd, fmt: str) -> dict[str, list[str]]:
    """``sd`` split over two shards (alternate keys) plus the index, as Hugging Face writes them."""
    keys = sorted(sd)
    ext, base = ("safetensors", "model") if fmt == "safetensors" else ("bin", "pytorch_model")
    shards = {f"{base}-0000{i}-of-00002.{ext}": keys[i - 1 :: 2] for i in (1, 2)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in shards.items():
        if fmt == "safetensors":
            save_file({k: sd[k] for k in part}, str(folder / name))
        else:
            torch.save({k: sd[k] for k in part}, folder / name)
    index = {"metadata": {"total_size": 0}, "weight_map": {k: n for n, part in shards.items() for k in part}}
    (folder / f"{base}.{ext}.index.json").write_text(json.dumps(index))
    return shards


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoints_load_identical_weights(tmp_path, fmt):
    torch.manual_seed(0)
    model = rs2sam2.build_model("nano").eval()
    rs2sam2.save_pretrained(model, tmp_path / "whole")
    sd = model.state_dict()
    folder = tmp_path / "sharded"
    shards = _write_shards(folder, sd, fmt)
    (folder / "config.json").write_bytes((tmp_path / "whole" / "config.json").read_bytes())
    assert all(len(part) > 100 for part in shards.values())

    index = locate(folder).weights
    assert index.name.endswith(".index.json")
    assert rs2sam2.checkpoints.shard_names(index) == sorted(shards)
    loaded = load_pretrained(folder).state_dict()
    assert sorted(loaded) == sorted(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_sharded_bin_is_read_weights_only(tmp_path, monkeypatch):
    """A ``.bin`` shard that would run code is refused like a single file, and the code never runs."""
    marker = tmp_path / "ran"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    sd = {"a": torch.zeros(2), "b": torch.ones(3)}
    shards = _write_shards(tmp_path / "s", sd, "bin")
    torch.save({"b": _Evil()}, tmp_path / "s" / sorted(shards)[1])
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "s" / "pytorch_model.bin.index.json")
    assert not marker.exists()


def test_shard_index_must_match_its_shards(tmp_path):
    sd = {"a": torch.zeros(2), "b": torch.ones(3), "c": torch.ones(1)}
    folder = tmp_path / "s"
    shards = _write_shards(folder, sd, "safetensors")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    assert read_state_dict(index_path).keys() == sd.keys()

    index["weight_map"]["d"] = sorted(shards)[0]  # listed, but in no shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002.safetensors: does not hold .*: d\)"):
        read_state_dict(index_path)
    index["weight_map"]["d"] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a file name beside the index"):
        read_state_dict(index_path)
    index_path.write_text(json.dumps({"weight_map": ["a"]}))
    with pytest.raises(CheckpointError, match="not a valid shard index"):
        read_state_dict(index_path)
    (folder / sorted(shards)[1]).unlink()
    index_path.write_text(json.dumps({"weight_map": {k: n for n, part in shards.items() for k in part}}))
    with pytest.raises(CheckpointError, match="not found: .*model-00002-of-00002.safetensors"):
        read_state_dict(index_path)


# --- checked before anything is allocated (issue 30) -----------------------------------------------

def _numeric_fields(cls):
    """(config class, field name, type) of every number or tuple of numbers in a config class tree."""
    import dataclasses
    import typing

    out = []
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            out += _numeric_fields(kind)
        elif kind in (int, float) or typing.get_origin(kind) is tuple:
            out.append((cls, f.name, kind))
    return out


def test_every_config_number_is_bounded():
    """Each number of a model configuration has an upper bound; one past it is refused naming the key."""
    from rs2sam2.config import BOUNDS, ModelConfig
    from rs2sam2.errors import ConfigError

    fields = _numeric_fields(ModelConfig)
    assert {name for _, name, _ in fields} == set(BOUNDS)
    nested = {"HieraConfig": "hiera", "Beit3Config": "beit3", "FusionConfig": "fusion"}
    for cls, name, kind in fields:
        too_big = BOUNDS[name] * 2 if kind is float else int(BOUNDS[name]) + 1
        value = [too_big] * len(getattr(cls(), name)) if isinstance(getattr(cls(), name), tuple) else too_big
        key = name if cls is ModelConfig else f"{nested[cls.__name__]}.{name}"
        raw = {name: value} if cls is ModelConfig else {nested[cls.__name__]: {name: value}}
        with pytest.raises(ConfigError, match=rf"^{key}: expected .* in \[\d+, "):
            ModelConfig.from_dict(raw)
    with pytest.raises(ConfigError, match=r"^beit3\.embed_dim: expected an integer in \[1, 8192\], got 10000000$"):
        ModelConfig.from_dict({"beit3": {"embed_dim": 10**7}})
    with pytest.raises(ConfigError, match="hiera.dim_mul, head_mul: the last stage would be"):
        ModelConfig.from_dict({"hiera": {"dim_mul": 8.0}})


def _nano_folder(folder, beit3=None):
    """A saved nano checkpoint whose config.json's beit3 section is then changed by ``beit3``."""
    rs2sam2.save_pretrained(rs2sam2.build_model("nano"), folder)
    if beit3:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["rs2sam2_config"]["beit3"].update(beit3)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_config_json_out_of_bounds_names_the_file_and_key(tmp_path):
    folder = _nano_folder(tmp_path / "ckpt", {"embed_dim": 10**7})
    with pytest.raises(CheckpointError, match=r"ckpt/config.json: rs2sam2_config\.beit3\.embed_dim: expected an "
                                              r"integer in \[1, 8192\], got 10000000"):
        load_pretrained(folder)


def test_absurd_width_fails_in_bounded_memory(tmp_path):
    """A config.json with widths within the bounds but not those of its weights (a model of a few
    hundred GB): refused from the weights' headers alone, exit 2 and one line, under a 3 GB address space."""
    import subprocess
    import sys

    folder = _nano_folder(tmp_path / "ckpt", {"embed_dim": 8192, "ffn_dim": 65536, "depth": 24})
    (folder / "tokenizer.model").write_bytes((FIXTURES / "tokenizer" / "test_xlmr.model").read_bytes())
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "scene.png")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from rs2sam2.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "predict", "--checkpoint", str(folder), "--image",
                             str(tmp_path / "scene.png"), "--text", "the tank", "--out", str(tmp_path / "m.png"),
                             "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert "does not fit this model" in result.stderr and "checkpoint (128,) vs model (8192,)" in result.stderr
    assert f"built from {folder / 'config.json'}, which does not describe these weights" in result.stderr
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded"])
def test_shapes_come_from_the_headers(tmp_path, fmt):
    """read_shapes gives what read_state_dict would, as meta tensors, without reading the weights."""
    from rs2sam2.checkpoints import read_shapes

    sd = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.ones(2, dtype=torch.bfloat16)}
    if fmt == "safetensors":
        path = tmp_path / "m.safetensors"
        save_file(sd, str(path))
    elif fmt == "bin":
        path = tmp_path / "m.bin"
        torch.save({"state_dict": sd}, path)
    else:
        _write_shards(tmp_path / "s", sd, "safetensors")
        path = tmp_path / "s" / "model.safetensors.index.json"
    shapes = read_shapes(path)
    assert {k: (v.shape, v.dtype) for k, v in shapes.items()} == {k: (v.shape, v.dtype) for k, v in sd.items()}
    assert all(v.device.type == "meta" for v in shapes.values())


def test_official_parts_are_checked_on_shapes_first(tmp_path, monkeypatch):
    """A SAM2 checkpoint of the wrong size is refused from its header: its tensors are never read."""
    big = {"image_encoder.trunk.pos_embed": torch.zeros(1, 144, 7, 7)}
    save_file(big, str(tmp_path / "sam2.safetensors"))
    read = []
    monkeypatch.setattr(rs2sam2.checkpoints, "read_state_dict", lambda p: read.append(p) or {})
    with pytest.raises(CheckpointError, match=r"sam2 checkpoint .*sam2\.safetensors does not fit.*pos_embed"):
        load_sam2_checkpoint(rs2sam2.build_model("nano"), tmp_path / "sam2.safetensors")
    assert read == []


@pytest.mark.parametrize("content,what", [(b"weights: none\n", "it holds text"), (b"", "it is empty"),
                                          (b"\x89PNG\r\n\x1a\n0000", "it starts with the bytes 89 50 4e 47")])
def test_a_file_that_is_not_weights_says_what_it_is(tmp_path, content, what):
    (tmp_path / "notes.txt").write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"notes\.txt: not a weights file \({what}.*\); expected a "
                                              r"\.safetensors file"):
        locate(tmp_path / "notes.txt")
