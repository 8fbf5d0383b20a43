"""Checkpoints by Hugging Face Hub id, read offline from a cache laid out as huggingface_hub lays it.

The cache is ``<cache>/models--owner--name/{blobs/<sha256>, snapshots/<commit>/<path> -> blob,
refs/<branch> = <commit>}``. Every test runs with ``HF_HUB_OFFLINE=1``: nothing goes to the network.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import helpers_ckpt as h
import rs2sam2
from rs2sam2 import CheckpointError
from rs2sam2.checkpoints import locate
from rs2sam2.checkpoints.hub import is_repo_id
from rs2sam2.cli import main as cli_main
from rs2sam2.predict import Predictor

pytest.importorskip("huggingface_hub")
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = "ReeF2025/RS2-SAM2"
TEXT = "the red building on the left"
SRC = Path(__file__).resolve().parents[1] / "src"


def cache_repo(cache: Path, repo_id: str, files: dict[str, Path], ref: str | None = "main",
               commit: str | None = None) -> str:
    """Put ``files`` (path in the repository -> local file) into ``cache`` as huggingface_hub does
    (content-addressed blobs, snapshot symlinks, ``refs/<ref>`` holding the commit); returns the commit."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    commit = commit or hashlib.sha1(repr(sorted(files)).encode() + str(ref).encode()).hexdigest()
    for rel, src in files.items():
        data = Path(src).read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return commit


def folder_files(folder: Path, subfolder: str, names=("config.json", "model.safetensors", "tokenizer.model")):
    return {f"{subfolder}/{n}": folder / n for n in names}


@pytest.fixture
def hub_cache(tmp_path):
    """``HF_HUB_CACHE`` -> an empty folder and ``HF_HUB_OFFLINE=1``. huggingface_hub reads both into
    ``huggingface_hub.constants`` at import, so that module is re-read with them, and again after."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        importlib.reload(constants)
        assert constants.HF_HUB_OFFLINE and Path(constants.HF_HUB_CACHE) == cache  # never online here
        yield cache
    importlib.reload(constants)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return h.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano", seed=0)


@pytest.fixture(scope="module")
def ckpt_b(tmp_path_factory) -> Path:
    return h.build_checkpoint(tmp_path_factory.mktemp("ckpt_b") / "nano", seed=1)


def _same_weights(model, folder: Path) -> bool:
    ref = load_file(str(folder / "model.safetensors"))
    sd = model.state_dict()
    return sorted(sd) == sorted(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_repo_id_form():
    for ok in ("ReeF2025/RS2-SAM2", "a/b", "owner/name.v2", "o_1/n-2"):
        assert is_repo_id(ok), ok
    for bad in ("RS2-SAM2", "a/b/c", "/a/b", "./a", "a/", "a--b/c", "a/b..c", "a/-b", "a/b.", "ckpt\\x", ""):
        assert not is_repo_id(bad), bad


def test_load_pretrained_and_predictor_by_hub_id(hub_cache, ckpt, ckpt_b):
    cache_repo(hub_cache, REPO, {**folder_files(ckpt, "rrsisd"), **folder_files(ckpt_b, "refseg")})

    model = rs2sam2.load_pretrained(REPO, subfolder="rrsisd")
    assert model.config == rs2sam2.load_pretrained(ckpt).config and _same_weights(model, ckpt)
    assert _same_weights(rs2sam2.load_pretrained(REPO, subfolder="refseg"), ckpt_b)

    located = locate(REPO, subfolder="rrsisd")
    assert located.path.parent.parent.name == "snapshots" and located.path.name == "rrsisd"
    assert hub_cache in located.path.parents and located.tokenizer.name == "tokenizer.model"

    image = h.write_png(hub_cache.parent / "scene.png")
    by_id = Predictor.from_pretrained(REPO, subfolder="rrsisd", revision="main").predict(image, TEXT, threshold=0)
    local = Predictor.from_pretrained(ckpt).predict(image, TEXT, threshold=0)
    np.testing.assert_array_equal(by_id.logits, local.logits)


def test_revision_other_than_main(hub_cache, ckpt, ckpt_b):
    main_commit = cache_repo(hub_cache, REPO, folder_files(ckpt, "rrsisd"), ref="main")
    cache_repo(hub_cache, REPO, folder_files(ckpt_b, "rrsisd"), ref="v1.1")
    tagless = cache_repo(hub_cache, REPO, folder_files(ckpt_b, "rrsisd"), ref=None, commit="c" * 40)

    assert _same_weights(rs2sam2.load_pretrained(REPO, subfolder="rrsisd"), ckpt)
    assert _same_weights(rs2sam2.load_pretrained(REPO, subfolder="rrsisd", revision="v1.1"), ckpt_b)
    assert _same_weights(rs2sam2.load_pretrained(REPO, subfolder="rrsisd", revision=main_commit), ckpt)
    assert _same_weights(rs2sam2.load_pretrained(REPO, subfolder="rrsisd", revision=tagless), ckpt_b)
    with pytest.raises(CheckpointError, match=r"does not hold revision 'v2' of it \(cached revisions: main, v1.1\)"):
        rs2sam2.load_pretrained(REPO, subfolder="rrsisd", revision="v2")


def test_sharded_checkpoint_by_hub_id(hub_cache, ckpt, tmp_path):
    """Both shards are fetched through the index; a shard missing from the cache is named."""
    sd = load_file(str(ckpt / "model.safetensors"))
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    src = tmp_path / "sharded"
    src.mkdir()
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, str(src / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(ckpt / name, src / name)
    files = {f"sharded/{p.name}": p for p in src.iterdir()}
    cache_repo(hub_cache, REPO, files)
    assert _same_weights(rs2sam2.load_pretrained(REPO, subfolder="sharded"), ckpt)

    del files["sharded/model-00002-of-00002.safetensors"]
    cache_repo(hub_cache, "owner/partial", files)
    with pytest.raises(CheckpointError, match="shard sharded/model-00002-of-00002.safetensors .* missing from the c"):
        rs2sam2.load_pretrained("owner/partial", subfolder="sharded")


def test_offline_errors_say_what_the_cache_holds(hub_cache, ckpt):
    with pytest.raises(CheckpointError) as e:
        rs2sam2.load_pretrained("nobody/nothing")
    assert f"the cache {hub_cache} does not hold nobody/nothing; HF_HUB_OFFLINE is set" in str(e.value)
    assert "nobody/nothing is not a local path" in str(e.value)

    cache_repo(hub_cache, REPO, {**folder_files(ckpt, "rrsisd"), "docs/config.json": ckpt / "config.json"})
    with pytest.raises(CheckpointError, match=r"none of model.safetensors.* in subfolder 'refseg' "
                                              r"\(cached folders with weights: rrsisd\)"):
        rs2sam2.load_pretrained(REPO, subfolder="refseg")
    with pytest.raises(CheckpointError, match=r"in the top folder \(cached folders with weights: rrsisd\)"):
        rs2sam2.load_pretrained(REPO)  # the released repository keeps its weights in subfolders
    with pytest.raises(CheckpointError, match=r"none of model.safetensors.* in subfolder 'docs'"):
        rs2sam2.load_pretrained(REPO, subfolder="docs")  # a folder without weights
    with pytest.raises(CheckpointError, match="relative path inside"):
        rs2sam2.load_pretrained(REPO, subfolder="../models--nobody--nothing")


@pytest.mark.slow
def test_unreachable_hub_is_asked_once(hub_cache, ckpt, monkeypatch):
    """Not offline, but the Hub cannot be reached (HF_ENDPOINT: a closed local port). A cached
    checkpoint loads: its first file comes from the cache, the others are asked for at that file's
    commit (read from the cache without a request). For a file not cached huggingface_hub retries
    for ~25 s; after that, only the cache is read."""
    import huggingface_hub
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    importlib.reload(constants)
    assert not constants.HF_HUB_OFFLINE and constants.ENDPOINT == "http://127.0.0.1:9"
    commit = cache_repo(hub_cache, REPO, folder_files(ckpt, "rrsisd"))
    calls = []
    download = huggingface_hub.hf_hub_download

    def counting(repo_id, filename, revision, local_files_only):
        calls.append((filename, revision, local_files_only))
        return download(repo_id, filename, revision=revision, local_files_only=local_files_only)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", counting)
    assert _same_weights(rs2sam2.load_pretrained(REPO, subfolder="rrsisd"), ckpt)
    assert calls == [("rrsisd/model.safetensors", "main", False), ("rrsisd/config.json", commit, False),
                     ("rrsisd/tokenizer.model", commit, False)]

    calls.clear()
    with pytest.raises(CheckpointError, match=r"the cache .* does not hold revision 'v9' of it \(cached revisions: "
                                              r"main\); the Hugging Face Hub could not be reached"):
        rs2sam2.load_pretrained(REPO, subfolder="rrsisd", revision="v9")
    assert [c[2] for c in calls] == [False] + [True] * (len(rs2sam2.checkpoints.WEIGHTS_NAMES) - 1)


def test_local_paths_take_subfolder_but_not_revision(ckpt, tmp_path):
    root = tmp_path / "clone"
    shutil.copytree(ckpt, root / "rrsisd")
    assert _same_weights(rs2sam2.load_pretrained(root, subfolder="rrsisd"), ckpt)
    with pytest.raises(CheckpointError, match="has no subfolder 'refseg'"):
        locate(root, subfolder="refseg")
    with pytest.raises(CheckpointError, match="applies to Hugging Face Hub ids only"):
        locate(root / "rrsisd", revision="main")
    with pytest.raises(CheckpointError, match="^checkpoint not found: a/b/c$"):
        locate("a/b/c")  # not a Hub id either: huggingface_hub is not asked


def test_missing_extra_is_named(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub -> ImportError
    with pytest.raises(CheckpointError, match=r"^checkpoint not found: ReeF2025/RS2-SAM2 is not a local path, and "
                                              r"loading .* needs huggingface_hub.*pip install 'rs2sam2\[hub\]'"):
        rs2sam2.load_pretrained(REPO, subfolder="rrsisd")
    image = h.write_png(tmp_path / "scene.png")
    rc = cli_main(["predict", "--checkpoint", REPO, "--subfolder", "rrsisd", "--image", str(image), "--text", TEXT,
                   "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "rs2sam2[hub]" in err and "Traceback" not in err


def test_predict_cli_by_hub_id_in_a_fresh_process(ckpt, tmp_path):
    """``rs2sam2 predict --checkpoint owner/name --subfolder x`` with the cache found through HF_HOME
    (``HF_HOME/hub``) and HF_HUB_OFFLINE set before huggingface_hub is imported: the mask equals the
    one of the local folder."""
    home = tmp_path / "hf-home"
    cache_repo(home / "hub", REPO, folder_files(ckpt, "rrsisd"))
    image = h.write_png(tmp_path / "scene.png")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")

    argv = ["predict", "--checkpoint", REPO, "--subfolder", "rrsisd", "--revision", "main", "--image", str(image),
            "--text", TEXT, "--out", str(tmp_path / "hub.png"), "--threshold", "0", "--device", "cpu",
            "--precision", "fp32"]  # the fresh process does not share the suite's fp32 'auto' (conftest.py)
    done = subprocess.run([sys.executable, "-m", "rs2sam2", *argv], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    expected = Predictor.from_pretrained(ckpt, precision="fp32").predict(image, TEXT, threshold=0).mask
    with Image.open(tmp_path / "hub.png") as m:
        np.testing.assert_array_equal(np.asarray(m) == 255, expected)



def test_serve_and_evaluate_take_the_hub_flags(hub_cache, ckpt, tmp_path, capsys):
    """evaluate runs a checkpoint given by Hub id; predict, serve and evaluate fail with exit 2, writing
    nothing, on a missing one."""
    cache_repo(hub_cache, REPO, folder_files(ckpt, "rrsisd"))
    data = tmp_path / "data"
    assert cli_main(["synth", "--format", "rrsisd", "--out", str(data), "--num-images", "6", "--seed", "0"]) == 0
    common = ["--data", str(data), "--dataset", "rrsisd", "--split", "test", "--limit", "2", "--no-progress",
              "--device", "cpu"]
    assert cli_main(["evaluate", "--checkpoint", REPO, "--subfolder", "rrsisd", "--out", str(tmp_path / "hub.json"),
                     *common]) == 0
    assert cli_main(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "local.json"), *common]) == 0
    hub_report, local_report = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("hub", "local"))
    assert hub_report["checkpoint"].startswith(str(hub_cache.resolve()))
    assert hub_report["checkpoint"].endswith("rrsisd") and hub_report["num_expressions"] == 2
    for key in ("mIoU", "oIoU", "Pr@0.5"):
        assert hub_report[key] == local_report[key], key
    capsys.readouterr()

    image = h.write_png(tmp_path / "s.png")
    for argv in (["evaluate", "--checkpoint", REPO, "--subfolder", "refseg", "--out", str(tmp_path / "x.json"),
                  *common],
                 ["serve", "--checkpoint", REPO, "--subfolder", "refseg", "--revision", "main"],
                 ["predict", "--checkpoint", REPO, "--subfolder", "refseg", "--image", str(image), "--text", TEXT,
                  "--out", str(tmp_path / "x.png")]):
        assert cli_main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert "subfolder 'refseg'" in err and "Traceback" not in err, err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.png").exists()
    assert cli_main(["evaluate", "--predictions", str(tmp_path), "--subfolder", "rrsisd", "--out",
                     str(tmp_path / "x.json"), *common]) == 2
    assert "--subfolder and --revision go with --checkpoint" in capsys.readouterr().err


def test_paths_on_disk_are_never_hub_ids(tmp_path, monkeypatch, capsys):
    """A relative path of the form owner/name that exists on disk in any form -- a broken link, a
    link loop -- is a local error naming it; the Hub is never asked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rs2sam2.checkpoints.hub, "HubRepo", lambda *a, **k: pytest.fail("the Hub was asked"))
    Path("owner").mkdir()
    Path("owner/broken").symlink_to("nowhere")
    Path("owner/loop").symlink_to("loop")
    Path("owner/a").symlink_to("b")
    Path("owner/b").symlink_to("a")
    assert is_repo_id("owner/broken") and is_repo_id("owner/loop")
    with pytest.raises(CheckpointError, match=r"^checkpoint owner/broken: a broken symbolic link \(to nowhere"):
        locate("owner/broken")
    for name in ("owner/loop", "owner/a"):
        with pytest.raises(CheckpointError, match=rf"^checkpoint {name}: a loop of symbolic links$"):
            locate(name)
    image = h.write_png(tmp_path / "scene.png")
    rc = cli_main(["predict", "--checkpoint", "owner/loop", "--image", str(image), "--text", TEXT, "--out", "m.png"])
    err = capsys.readouterr().err
    assert rc == 2 and "owner/loop: a loop of symbolic links" in err and "Traceback" not in err
