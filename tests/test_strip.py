"""A file's meta holds each fact once; a stripped file keeps only what loading needs, with every
tensor byte as it was (issue 15: a lean header, strippable for deployment)."""

import dataclasses
import json
import struct
from pathlib import Path

import pytest
import torch

import fisherpack
from fisherpack.cli.main import main
from fisherpack.errors import FormatError
from fisherpack.fpk import container as fmt
from fisherpack.fpk import meta as file_meta
from fisherpack.fpk.header import inflate_header
from fisherpack.loading import summary
from fisherpack.models import build

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
PIPELINE_META = {
    "fisherpack": "0.1.0",
    "pipeline": {"model": "lenet5", "seed": 3, "structured": 0.8, "compress": {"rate": 0.99, "entropy": True}},
    "original": {"params": 431_080, "fp32_bytes": 1_724_320},
}


def _parts(blob: bytes) -> tuple[dict, bytes]:
    """(header JSON, payload bytes) of a file."""
    hlen, plen = struct.unpack_from("<IQ", blob, 10)
    version = struct.unpack_from("<H", blob, 8)[0]
    return json.loads(inflate_header(blob[22 : 22 + hlen], version)), blob[22 + hlen : 22 + hlen + plen]


def test_facts_are_read_from_the_pipeline_config_when_not_beside_it():
    assert file_meta.model_name(PIPELINE_META) == "lenet5" and file_meta.compress_config(PIPELINE_META)["rate"] == 0.99
    assert file_meta.model_name({"model": "m", "config": {"rate": 0.5}}) == "m"
    assert file_meta.compress_config({"config": {"rate": 0.5}}) == {"rate": 0.5}
    assert file_meta.model_name({}) is None and file_meta.compress_config({"config": 3}) is None
    assert file_meta.shrunk(PIPELINE_META) and file_meta.shrunk({"original": {}})
    assert not file_meta.shrunk({"pipeline": {"structured": 0}}) and not file_meta.shrunk({"config": {}})


def test_a_model_name_in_the_pipeline_config_is_checked_as_one_beside_it():
    blob = fmt.encode(fisherpack.Compressed({}, {"pipeline": {"model": ["lenet5"]}}))
    with pytest.raises(FormatError, match="meta.model must be a string"):
        fmt.decode(blob)


def test_an_entropy_override_corrects_every_recorded_config_and_nothing_else():
    both = {**PIPELINE_META, "config": {"rate": 0.99, "entropy": True}}  # files of fisherpack <= this change
    fixed = file_meta.with_entropy(both, False)
    assert fixed["config"]["entropy"] is False and fixed["pipeline"]["compress"]["entropy"] is False
    assert fixed["pipeline"]["seed"] == 3 and both["pipeline"]["compress"]["entropy"] is True  # a copy


def test_stripping_keeps_the_tensors_bytes_and_only_what_loading_needs():
    path = RESULTS / "lenet5.fpk"
    blob = path.read_bytes()
    small = fmt.stripped(blob)
    (head, payload), (small_head, small_payload) = _parts(blob), _parts(small)
    assert small_payload == payload and small_head["tensors"] == head["tensors"]
    assert small_head["meta"] == {"model": "lenet5", "original": {"params": 431_080, "fp32_bytes": 1_724_320}}
    assert len(small) < len(blob)  # with the version-3 dictionary the provenance costs only ~30 bytes
    assert fmt.stripped(small) == small  # stripping twice changes nothing
    # it loads as the same smaller LeNet-5, and its ratio is against the model the user builds
    full, lean = fisherpack.load_into(build("lenet5"), path), fisherpack.load_into(build("lenet5"), fmt.decode(small))
    for (name, a), b in zip(full.state_dict().items(), lean.state_dict().values()):
        assert torch.equal(a, b), name
    assert summary(fmt.decode(small), len(small))["ratio"] == 1_724_320 / len(small)


def test_a_version_2_file_is_stripped_into_the_current_version():
    old = (Path(__file__).parent / "data" / "lenet5-v2.fpk").read_bytes()  # 5,906 bytes, a 677-byte header
    small = fmt.stripped(old)
    assert struct.unpack_from("<H", small, 8)[0] == 4 and _parts(small)[1] == _parts(old)[1]
    assert _parts(small)[0]["meta"] == {"model": "lenet5"} and len(small) < len(old) - 400


def test_a_corrupt_file_is_not_stripped():
    blob = bytearray((RESULTS / "lenet5.fpk").read_bytes())
    blob[100] ^= 1
    with pytest.raises(FormatError, match="checksum"):
        fmt.stripped(bytes(blob))


def test_export_strip_writes_the_size_eval_reports(tmp_path, capsys):
    out = tmp_path / "lean.fpk"
    assert main(["export", str(RESULTS / "lenet300.fpk"), "--strip", str(out)]) == 0
    blob = (RESULTS / "lenet300.fpk").read_bytes()
    assert out.read_bytes() == fmt.stripped(blob) and _parts(out.read_bytes())[0]["meta"] == {
        "model": "lenet300",
        "original": {"params": 266_610, "fp32_bytes": 1_066_440},
    }  # structured: original size
    same = tmp_path / "same.fpk"
    same.write_bytes(blob)
    assert main(["export", str(same), "--strip", str(same)]) == 1 and same.read_bytes() == blob  # never clobbered
    assert "\n" not in capsys.readouterr().err.strip()
    assert main(["export", str(RESULTS / "lenet300.fpk")]) == 1
    assert "--strip OUT" in capsys.readouterr().err


def test_a_version_1_file_stays_version_1_when_stripped():
    old = (Path(__file__).parent / "data" / "lenet5-v1.fpk").read_bytes()
    small = fmt.stripped(old)
    assert struct.unpack_from("<H", small, 8)[0] == 1 and _parts(small)[1] == _parts(old)[1]
    for (name, a), b in zip(fmt.decode(old).state_dict().items(), fmt.decode(small).state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("original", [{"params": 431_080 * 10, "fp32_bytes": 1_724_320 * 10}, ["x"], None])
def test_a_shrunk_file_that_misstates_its_model_is_refused_before_the_model_is_touched(tmp_path, capsys, original):
    """The ratio of a structured file is against the size its meta says the model had: a file
    that inflates (or garbles) that size is refused by load_into and eval in one line."""
    packed = fisherpack.load(RESULTS / "lenet5.fpk")
    if original is not None:
        packed = dataclasses.replace(packed, meta={**packed.meta, "original": original})
    path = tmp_path / "claims.fpk"
    fmt.save(packed, path)
    model = build("lenet5")
    if original is None:  # the committed file's own claim: the LeNet-5 the user builds
        assert fisherpack.load_into(model, path).conv2.out_channels < 50
        return
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(fisherpack.ConfigError, match="is it the right model"):
        fisherpack.load_into(model, path)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())  # untouched
    capsys.readouterr()
    assert main(["eval", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "431,080 values" in err, err
