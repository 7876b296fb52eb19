"""Integrity of every file coophash reads back: checksums sealed in checkpoints, code files, fakes files,
index labels, manifests, run configs and metrics lines; files written before checksums still load.

The exhaustive mutation test over every file type of a real run is in ``test_faults.py``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save as st_save
from torch import nn

from coophash.cli import cli
from coophash.codefile import (CodeFile, CodeFileError, index_labels_path, load_codes, load_index_labels,
                               save_codes, save_index_labels)
from coophash.config import TrainConfig, load_config
from coophash.data import DataError, HashDataset, Manifest, make_protocol
from coophash.fakes import FakesError, load_fakes, read_fakes_meta, save_fakes
from coophash.train import runs
from coophash.train.checkpoint import (CheckpointError, load_checkpoint, load_weights, read_checkpoint_state,
                                       save_checkpoint)
from coophash.utils.integrity import IntegrityError, PLACEHOLDER, read_safetensors, seal, verify


def _flip_each_byte(data: bytes):
    """Every single-byte change of ``data``: each byte XOR 0x01 (one bit) and XOR 0xFF."""
    for i in range(len(data)):
        for mask in (0x01, 0xFF):
            yield bytes(data[:i]) + bytes([data[i] ^ mask]) + bytes(data[i + 1:])


# ------------------------------------------------------------------------------------------ the seal
def test_seal_detects_every_single_byte_change():
    field = b'"sha256":"'
    data = seal(b'{"a":1,"sha256":"' + PLACEHOLDER + b'","b":[1,2,3]}\n', field)
    digest = json.loads(data)["sha256"]
    verify(data, field, digest)
    changed = 0
    for bad in _flip_each_byte(data):
        with pytest.raises(IntegrityError):
            try:
                verify(bad, field, json.loads(bad)["sha256"])
            except (ValueError, KeyError, TypeError) as exc:  # not JSON any more, or no checksum field: refused too
                raise IntegrityError(str(exc)) from None
        changed += 1
    assert changed == 2 * len(data)
    with pytest.raises(IntegrityError, match="missing"):
        seal(b"no placeholder here", field)


def test_read_safetensors_layout_errors():
    data = st_save({"x": torch.arange(4.0)}, metadata={"k": "v"})
    assert read_safetensors(data) == ({"k": "v"}, False)  # no checksum: the caller decides
    for bad, pattern in ((b"", "empty"), (data[:5], "truncated"), (data[:-1], "truncated"),
                         (data + b"x", "trailing bytes"), (b"\xff" * 64, "header"), (data[:8] + b"[]" * 20, "header")):
        with pytest.raises(IntegrityError, match=pattern):
            read_safetensors(bad)


# ------------------------------------------------------------------------------------------ checkpoints
def _float_offset(path, key: str) -> int:
    """Byte offset in the file of the first element of tensor ``key``."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return 8 + n + json.loads(data[8:8 + n])[key]["data_offsets"][0]


def test_checkpoint_with_a_flipped_exponent_bit_is_refused(tmp_path):
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, modules={"model": nn.Linear(4, 4)}, state={"epoch": 1})
    data = bytearray(path.read_bytes())
    data[_float_offset(path, "module/model/weight") + 3] ^= 0x40  # bit 30 of a float32: its exponent
    path.write_bytes(bytes(data))
    for read in (lambda p: load_checkpoint(p, modules={"model": nn.Linear(4, 4)}), read_checkpoint_state,
                 lambda p: load_weights(p, nn.Linear(4, 4))):
        with pytest.raises(CheckpointError, match=r"best\.safetensors: unreadable checkpoint: checksum mismatch"):
            read(path)


def test_checkpoint_without_its_checksum_is_refused_and_old_files_load(tmp_path):
    path = tmp_path / "c.safetensors"
    model = nn.Linear(3, 2)
    save_checkpoint(path, modules={"model": model}, state={"epoch": 3})
    meta, sealed = read_safetensors(path.read_bytes())
    assert sealed and meta["format_version"] == "2"
    tensors = {"module/model/weight": model.weight.detach().clone(), "module/model/bias": model.bias.detach().clone()}
    rest = {k: v for k, v in meta.items() if k != "sha256"}
    (tmp_path / "v2.safetensors").write_bytes(st_save(tensors, metadata=rest))
    with pytest.raises(CheckpointError, match=r"v2\.safetensors: .*checksum is missing"):
        read_checkpoint_state(tmp_path / "v2.safetensors")
    # version 1 (written before checksums): the same layout without the checksum loads as it is
    (tmp_path / "v1.safetensors").write_bytes(st_save(tensors, metadata={**rest, "format_version": "1"}))
    other = nn.Linear(3, 2)
    load_weights(tmp_path / "v1.safetensors", other)
    assert torch.equal(other.weight, model.weight)
    assert read_checkpoint_state(tmp_path / "v1.safetensors") == {"epoch": 3}


# ------------------------------------------------------------------------------------------ code files, fakes
def test_code_file_checksum_and_old_code_files(tmp_path):
    path = tmp_path / "db.codes"
    codes = np.arange(20, dtype=np.uint8).reshape(10, 2)
    save_codes(path, codes, 16, labels=np.eye(10))
    assert np.array_equal(load_codes(path).codes, codes)
    data = path.read_bytes()
    bad = bytearray(data)
    bad[-1 - 80 * 4 - 5] ^= 0x01  # a byte of the codes (before the 10x10 float32 labels and 10 int64 ids)
    path.write_bytes(bytes(bad))
    with pytest.raises(CodeFileError, match=r"db\.codes: unreadable code file: checksum mismatch"):
        load_codes(path)
    meta, _ = read_safetensors(data)
    old = {k: v for k, v in meta.items() if k != "sha256"}
    tensors = {"codes": torch.from_numpy(codes), "ids": torch.arange(10)}
    path.write_bytes(st_save(tensors, metadata={**old, "version": "1"}))  # written before checksums
    assert np.array_equal(load_codes(path, nbits=16).codes, codes)
    path.write_bytes(st_save(tensors, metadata=old))
    with pytest.raises(CodeFileError, match="checksum is missing"):
        load_codes(path)


def test_fakes_checksum_and_old_fakes_files(tmp_path):
    path = tmp_path / "fakes.safetensors"
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    save_fakes(path, images, torch.eye(6, 3))
    assert len(load_fakes(path, channels=1, image_size=8)) == 6
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    for read in (load_fakes, read_fakes_meta):
        with pytest.raises(FakesError, match=r"fakes\.safetensors: unreadable fakes file: checksum mismatch"):
            read(path)
    meta = {"format": "coophash-fakes", "format_version": "1", "channels": "1", "height": "8", "width": "8",
            "count": "6", "dtype": "uint8", "conditional": "false", "source": ""}
    path.write_bytes(st_save({"images": torch.zeros(6, 1, 8, 8, dtype=torch.uint8)}, metadata=meta))
    assert load_fakes(path).images.shape == (6, 1, 8, 8)  # version 1, without a checksum: read as it is


# ------------------------------------------------------------------------------------------ index labels
def test_index_labels_are_bound_to_the_indexed_codes(tmp_path):
    index = tmp_path / "db.index"
    codes = np.arange(8, dtype=np.uint8).reshape(8, 1)
    ids = np.arange(100, 108)
    labels = np.eye(8, dtype=np.float32)
    assert save_index_labels(index, CodeFile(codes, 8, ids, labels)) == index_labels_path(index)
    got = load_index_labels(index, codes, ids)
    assert set(got) == set(ids.tolist()) and np.array_equal(got[103], labels[3])
    # the index is rebuilt from other codes but the labels file stays: refused, never shown for the new codes
    new_codes = codes[::-1].copy()
    with pytest.raises(CodeFileError, match=r"db\.index\.labels\.safetensors: .*other codes.*stale"):
        load_index_labels(index, new_codes, ids)
    with pytest.raises(CodeFileError, match="stale"):
        load_index_labels(index, codes, ids + 1)
    # rebuilt from a code file without labels: the old labels file goes away
    assert save_index_labels(index, CodeFile(new_codes, 8, ids, None)) is None
    assert not index_labels_path(index).exists() and load_index_labels(index, new_codes, ids) is None


# ------------------------------------------------------------------------------------------ configs
def test_run_config_is_sealed_and_read_strictly(tmp_path):
    cfg = TrainConfig(seed=7, bits=16)
    path = runs.write_config(tmp_path, cfg.to_dict())
    text = path.read_text()
    assert text.startswith("# coophash-config sha256=")
    assert runs.read_run_config(tmp_path) == cfg and load_config(path) == cfg
    path.write_text(text.replace("seed: 7", "seed: 8"))  # edited (or damaged) after it was written
    with pytest.raises(ValueError, match=r"config\.yaml: checksum mismatch.*delete its first line"):
        runs.read_run_config(tmp_path)
    path.write_text(text.split("\n", 1)[1].replace("seed: 7", "seed: 8"))  # the checksum line deleted on purpose
    assert runs.read_run_config(tmp_path).seed == 8
    cut = text.split("\n", 1)[1]
    path.write_text(cut[: cut.index("seed:")])  # an unsealed file cut before `seed:`: never the defaults
    with pytest.raises(ValueError, match=r"config\.yaml: incomplete run config.*missing field\(s\) seed"):
        runs.read_run_config(tmp_path)
    for content, pattern in ((b"", "the config file is empty"), (b"\n  \n", "the config file is empty"),
                             (bytes(range(256)), "not UTF-8 text"), (b"- 1\n", "mapping"),
                             (b"# coophash-config sha256=12\nbits: 8\n", "line 1 .*damaged")):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=r"config\.yaml: .*" + pattern):
            load_config(path)


@pytest.mark.parametrize("field, value, pattern", [
    ("bits", "abc", "bits must be an integer"),
    ("bits", 0, "bits must be positive"),
    ("threads", -2, "threads must be positive"),
    ("epochs", 1.5, "epochs must be an integer"),
    ("amp", "yes", "amp must be true or false"),
    ("seed", True, "seed must be an integer"),
    ("lr", "fast", "lr must be a number"),
    ("lr", float("nan"), "lr must be a finite number"),
    ("loss", 3, "loss must be a string"),
    ("method_args", [], "method_args must be a mapping"),
    ("image_size", 0, "image_size must be positive"),
])
def test_config_values_of_the_wrong_type_are_refused(tmp_path, field, value, pattern):
    with pytest.raises(ValueError, match=r"c\.yaml: " + pattern):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({field: value}))
        load_config(path)


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\n")  # PyYAML reads these as strings
    cfg = load_config(path)
    assert cfg.lr == 1e-3 and cfg.weight_decay == 5e-4


# ------------------------------------------------------------------------------------------ manifests
def _manifest() -> Manifest:
    ds = HashDataset.from_tensors(torch.zeros((40, 1, 1, 1), dtype=torch.uint8), np.arange(40) % 4, name="m")
    return make_protocol(ds, query_per_class=2, val_per_class=1, seed=0)


def test_manifest_checksum_catches_a_change_that_keeps_it_consistent(tmp_path):
    m = _manifest()
    path = m.save(tmp_path / "manifest.json")
    text = path.read_text()
    assert json.loads(text)["sha256"] != PLACEHOLDER.decode()
    assert Manifest.load(path).to_dict() == m.to_dict()
    assert text.count('"seed":0') == 1
    tampered = text.replace('"seed":0', '"seed":1')
    doc = json.loads(tampered)
    doc.pop("sha256")
    assert Manifest.from_json(json.dumps(doc)).seed == 1  # without its checksum: a valid, consistent manifest
    path.write_text(tampered)
    with pytest.raises(DataError, match=r"manifest\.json: checksum mismatch"):
        Manifest.load(path)
    legacy = json.dumps(m.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"  # written before checksums
    path.write_text(legacy)
    assert Manifest.load(path).to_dict() == m.to_dict()
    for content, pattern in (("", "empty manifest"), ("\n", "empty manifest")):
        path.write_text(content)
        with pytest.raises(DataError, match=r"manifest\.json: " + pattern):
            Manifest.load(path)
    path.write_bytes(b"\xff\xfe" + text.encode())
    with pytest.raises(DataError, match=r"manifest\.json: not a manifest \(not UTF-8"):
        Manifest.load(path)


# ------------------------------------------------------------------------------------------ the CLI
def test_eval_refuses_a_best_checkpoint_with_one_flipped_exponent_bit(tmp_path):
    """The review's case: one flipped bit made `coophash eval` report mAP 0.21 instead of 0.96, exit 0."""
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "--dataset", "digits", "--bits", "8", "--epochs", "1", "--out", str(tmp_path),
                            "--quiet", "--set", "protocol_args.query_per_class=10",
                            "--set", "protocol_args.val_per_class=10"])
    assert r.exit_code == 0, r.output
    run = runs.list_runs(tmp_path)[0]
    best = run / runs.BEST
    key = next(k for k in json.loads(best.read_bytes()[8:8 + int.from_bytes(best.read_bytes()[:8], "little")])
               if k.startswith("module/") and k.endswith("weight"))
    data = bytearray(best.read_bytes())
    data[_float_offset(best, key) + 3] ^= 0x40
    best.write_bytes(bytes(data))
    r = runner.invoke(cli, ["eval", str(run)])
    assert r.exit_code == 1
    assert "best.safetensors: unreadable checkpoint: checksum mismatch" in r.output
    assert "Traceback" not in r.output and "map@all" not in r.output


def test_index_over_an_existing_index_never_leaves_stale_labels(tmp_path):
    """The review's case: `coophash index` over an index kept the old labels file and search showed them."""
    runner = CliRunner()
    codes = np.arange(16, dtype=np.uint8).reshape(16, 1)
    save_codes(tmp_path / "a.codes", codes, 8, labels=np.eye(16, 4))
    save_codes(tmp_path / "b.codes", codes[::-1].copy(), 8)  # other codes, no labels
    index = tmp_path / "db.index"
    assert runner.invoke(cli, ["index", str(tmp_path / "a.codes"), "--out", str(index)]).exit_code == 0
    r = runner.invoke(cli, ["search", str(index), "--codes", str(tmp_path / "a.codes"), "-k", "1", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)[3]["hits"][0]["labels"] == [3], r.output
    assert runner.invoke(cli, ["index", str(tmp_path / "b.codes"), "--out", str(index)]).exit_code == 0
    assert not index_labels_path(index).exists()
    r = runner.invoke(cli, ["search", str(index), "--codes", str(tmp_path / "a.codes"), "-k", "1", "--json"])
    assert r.exit_code == 0 and all("labels" not in h for e in json.loads(r.output) for h in e["hits"]), r.output
    # labels of other codes beside an index (written by hand, or an older coophash): refused, never shown
    save_codes(index_labels_path(index), codes, 8, labels=np.eye(16, 4))
    r = runner.invoke(cli, ["search", str(index), "--codes", str(tmp_path / "a.codes"), "-k", "1"])
    assert r.exit_code == 1 and "db.index.labels.safetensors: these labels belong to other codes" in r.output
    assert "Traceback" not in r.output


def test_an_unsealed_run_config_cut_inside_its_last_line_is_refused(tmp_path):
    """Keys are sorted, so weight_decay comes last: `weight_decay: 1.0e-05` cut to `weight_decay: 1.0` would
    silently read as 1.0 if the missing end of the line were not noticed."""
    body = runs.write_config(tmp_path, TrainConfig().to_dict()).read_text().split("\n", 1)[1]
    assert body.rstrip().splitlines()[-1] == "weight_decay: 1.0e-05"
    path = tmp_path / runs.CONFIG
    path.write_text(body[: body.index("1.0e-05") + 3])
    assert load_config(path).weight_decay == 1.0  # what a lenient reader would train with
    with pytest.raises(ValueError, match=r"config\.yaml: incomplete run config \(cut short\?\): its last line"):
        runs.read_run_config(tmp_path)
    path.write_text(body.replace("amp: true\n", ""))  # written before `amp` existed: still resumes
    assert runs.read_run_config(tmp_path).amp is True
