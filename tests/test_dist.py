"""torch.distributed: two processes (gloo on 127.0.0.1) agree with one, and disagreement stops them.

Each test launches processes: torchrun for the runs that must succeed; for the runs that must fail,
the two ranks are started directly with torchrun's environment variables, because torchrun's agent
kills the surviving rank as soon as one exits, and the point is that every rank exits by itself.
"""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import dist_worker as w
import numpy as np
import pytest
import torch

from fisherpack import compress, data, fisher
from fisherpack.cli.main import main
from fisherpack.fpk import container as format
from fisherpack.fpk.tensors import QuantTensor
from fisherpack.train import train_epoch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "lenet300", "--epochs", "1", "--rounds", "2", "--finetune-epochs", "0.5", "--quiet", "--rate", "0.9"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's traffic stays on loopback whatever the host name says
    return {**env, **extra}


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    port = str(_free_port())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", port, *args]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _start_ranks(argv: list[str], **extra: str) -> list[subprocess.Popen]:
    """Two ranks started as torchrun starts them (static rendezvous on 127.0.0.1), without its agent."""
    world = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    return [
        subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=_env(RANK=str(r), LOCAL_RANK=str(r), **world, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return data.write_dataset(tmp_path_factory.mktemp("idx"), data.synthetic(400, 100, seed=0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny float32 model trained in this process: both runs compress these same weights."""
    model = w.tiny_model(torch.float32)
    x, y = w.tensors()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(2):
        train_epoch(model, opt, x, y, batch_size=w.BATCH, seed=0, epoch=epoch)
    folder = tmp_path_factory.mktemp("in")
    torch.save(model.state_dict(), folder / "trained.pt")
    return model, folder


@pytest.fixture(scope="module")
def two(trained, tmp_path_factory):
    """The estimators scenario under torchrun --nproc_per_node 2: what each rank computed, and the folder."""
    out = tmp_path_factory.mktemp("two")
    started = time.monotonic()
    _torchrun(str(ROOT / "tests" / "dist_worker.py"), "estimators", str(trained[1]), str(out))
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return ranks, out, time.monotonic() - started


def _max_abs(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def test_empirical_fisher_of_two_processes_equals_one_process(two):
    ranks, _, _ = two
    x, y = w.tensors()
    one = fisher.empirical(w.tiny_model(torch.float64), [(x[: w.FISHER_N].double(), y[: w.FISHER_N])], chunk=16)
    assert [r["n_local"] for r in ranks] == [51, 50]  # disjoint shards of unequal size
    for r in ranks:
        assert all(r["empirical64"][n].dtype == torch.float64 for n in one)
        for n in one:
            torch.testing.assert_close(r["empirical64"][n], one[n], rtol=1e-13, atol=0)
        assert _max_abs(r["empirical64"], one) < 1e-15
    assert all(torch.equal(ranks[0]["empirical64"][n], ranks[1]["empirical64"][n]) for n in one)


def test_two_processes_write_the_same_file_as_one(two, trained):
    ranks, out, _ = two
    model, _ = trained
    x, y = w.tensors()
    one = compress(model, fisher.empirical(model, [(x[: w.FISHER_N], y[: w.FISHER_N])], chunk=16), w.COMPRESS)
    blob = (out / "two.fpk").read_bytes()
    assert ranks[0]["save_digests"] == ranks[1]["save_digests"] == [hashlib.sha256(blob).hexdigest()] * 2
    got = format.decode(blob)
    for name, entry in one.tensors.items():
        if isinstance(entry, QuantTensor):  # the same masks and codes
            assert np.array_equal(entry.mask, got.tensors[name].mask)
            assert np.array_equal(entry.codes, got.tensors[name].codes) and entry.bits == got.tensors[name].bits
    assert blob == format.encode(one)  # and the same file, byte for byte


def test_adam_state_under_ddp_equals_one_process_with_the_global_batch(two):
    ranks, _, _ = two
    model = w.tiny_model(torch.float64)
    v = fisher.from_adam(w.adam_run(model, model), model)
    for name in v:
        assert torch.equal(ranks[0]["adam_v"][name], ranks[1]["adam_v"][name])  # DDP: same gradients on all ranks
        torch.testing.assert_close(ranks[0]["adam_v"][name], v[name], rtol=1e-12, atol=1e-20)
        torch.testing.assert_close(
            ranks[0]["params"][name], dict(model.named_parameters())[name], rtol=1e-12, atol=1e-14
        )
    assert torch.all(ranks[0]["params"]["1.weight"][~w.masks_for(model)["1.weight"]] == 0)


def test_adam_state_of_ranks_trained_without_ddp_is_refused(two):
    ranks, _, _ = two
    for r in ranks:
        assert r["adam_error"].startswith("ranks disagree on Adam's exp_avg_sq (train under DistributedDataParallel")
        assert "fisherpack.dist.wrap(model)" in r["unwrapped_error"]


def test_sampled_fisher_is_the_same_on_every_rank(two):
    ranks, _, _ = two
    a, b = ranks[0]["sampled64"], ranks[1]["sampled64"]
    assert all(torch.equal(a[n], b[n]) and torch.isfinite(a[n]).all() for n in a)


def test_a_diverged_file_is_refused_on_every_rank_and_not_written(two):
    ranks, out, _ = two
    for r in ranks:
        assert r["diverged_error"].startswith("ranks disagree on the bytes of diverged.fpk: rank 1 has SHA-256")
    assert not (out / "diverged.fpk").exists()


def test_a_failure_on_rank_0_reaches_every_rank(two):
    ranks, _, _ = two
    assert ranks[0]["rank0_error"] == "FisherpackError: rank 0 cannot do it"
    assert ranks[1]["rank0_error"].startswith("DistributedError: rank 1 of 2: stopped because rank 0 failed")


def test_pipelines_agree_across_ranks_and_resume(two):
    ranks, _, seconds = two
    for key in ("pipeline_empirical", "pipeline_sampled", "pipeline_resumed"):
        assert ranks[0][key] == ranks[1][key]
    assert ranks[0]["pipeline_resumed"] == ranks[0]["pipeline_sampled"]
    assert seconds < 60


def _readme_block(marker: str) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(b for b in blocks if marker in b).strip().splitlines()


def test_reproduce_under_torchrun_writes_a_file_that_eval_accepts(data_dir, tmp_path, capsys):
    (line,) = _readme_block("--nproc_per_node 2 -m fisherpack")  # the README's command, on tiny settings
    out = tmp_path / "two.fpk"
    line = line.replace("-m fisherpack reproduce", "-m fisherpack --timeout 60 reproduce")
    argv = [str(data_dir) if a == "D" else str(out) if a == "lenet5.fpk" else a for a in line.split()]
    assert argv[:3] == ["torchrun", "--nproc_per_node", "2"]
    done = _torchrun(*argv[3:], *TINY)
    assert done.stdout.count("wrote ") == 1  # tables from rank 0 only
    figures = json.loads(out.with_name("two.fpk.json").read_text())
    digests = figures["distributed"]["rank_sha256"]
    assert digests == [hashlib.sha256(out.read_bytes()).hexdigest()] * 2  # both ranks held the same bytes
    assert not out.with_name("two.fpk.ckpt").exists()
    assert main(["eval", str(out), "--data-dir", str(data_dir), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test_error"] == figures["test_error"] and again["file_bytes"] == out.stat().st_size
    assert abs(again["nonzero_params"] / again["params"] - 0.1) < 0.01


def test_a_diverged_rank_stops_every_rank_with_one_line(data_dir, tmp_path):
    out = tmp_path / "diverged.fpk"
    worker = str(ROOT / "tests" / "diverge_worker.py")
    argv = [worker, "--timeout", "60", "reproduce", *TINY, "--data-dir", str(data_dir), "--out", str(out)]
    argv[argv.index("--epochs") + 1] = "0"  # no training: straight to the first pruning round
    argv += ["--fisher", "empirical"]  # (Adam has no state before training)
    started = time.monotonic()
    procs = _start_ranks(argv)  # rank 1 flips one entry of its masks
    results = [p.communicate(timeout=120) for p in procs]
    assert time.monotonic() - started < 60
    for p, (_, stderr) in zip(procs, results):
        errors = [line for line in stderr.splitlines() if line.startswith("fisherpack: error:")]
        assert p.returncode == 1 and len(errors) == 1 and "Traceback" not in stderr, stderr
        assert errors[0].startswith("fisherpack: error: ranks disagree on the masks of step 1 (prune to"), errors[0]
    assert not out.exists() and not out.with_name("diverged.fpk.json").exists()


def test_a_rank_that_never_answers_cannot_hang_the_others(tmp_path):
    procs = _start_ranks([str(ROOT / "tests" / "dist_worker.py"), "stuck", str(tmp_path), str(tmp_path), "3"])
    try:
        procs[0].communicate(timeout=60)  # rank 1 sleeps in place of joining the collective
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 0
    res = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert res["error"].startswith("rank 0 of 2: comparing a test digest across ranks failed (")
    assert "another rank died, hung or diverged" in res["error"] and res["seconds"] < 30


def test_the_readmes_two_machine_commands_on_loopback(data_dir, tmp_path):
    """The README's two torchrun lines, one process per 'machine', both machines being this one."""
    lines = _readme_block("--nnodes")
    assert len(lines) == 2 and all(line.startswith("torchrun --nnodes 2 --node_rank") for line in lines)
    out, port = tmp_path / "nodes.fpk", str(_free_port())
    agents = []
    for line in lines:
        line = line.replace("HOST:29500", f"127.0.0.1:{port}").replace("--nproc_per_node 2", "--nproc_per_node 1")
        line = line.replace("-m fisherpack reproduce", "-m fisherpack --timeout 60 reproduce")
        argv = [arg if arg != "D" else str(data_dir) for arg in line.split()[1:]]
        cmd = [sys.executable, "-m", "torch.distributed.run", *argv, *TINY, "--out", str(out)]
        agents.append(subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [a.communicate(timeout=180) for a in agents]
    assert [a.returncode for a in agents] == [0, 0], results
    digests = json.loads(out.with_name("nodes.fpk.json").read_text())["distributed"]["rank_sha256"]
    assert digests == [hashlib.sha256(out.read_bytes()).hexdigest()] * 2
