import numpy as np
import pytest
import torch

from fisherpack import data, pipeline
from fisherpack.config import CompressConfig, PipelineConfig
from fisherpack.errors import FisherpackError
from fisherpack.fpk.tensors import QuantTensor
from fisherpack.quant import FakeQuant

CFG = PipelineConfig(
    model="lenet300",
    epochs=2,
    rounds=2,
    finetune_epochs=0.5,
    final_epochs=1,
    qat_epochs=1,
    batch_size=50,
    compress=CompressConfig(rate=0.9, criterion="obd", bits=4, groups=2),
)


@pytest.fixture(scope="module")
def tensors():
    return data.synthetic(500, 200, seed=0).tensors()


class _Recorder:
    def __init__(self, stop_after: int | None = None):
        self.total = self.done = None
        self.seen, self.stages, self.stop_after = 0, [], stop_after

    def start(self, total, done):
        self.total, self.done = total, done

    def advance(self, n):
        self.seen += n
        if self.stop_after is not None and self.done + self.seen >= self.stop_after:
            raise KeyboardInterrupt

    def stage(self, text):
        self.stages.append(text)


def _same(a, b):
    assert list(a.tensors) == list(b.tensors)
    for name, ea in a.tensors.items():
        eb = b.tensors[name]
        if isinstance(ea, QuantTensor):
            assert np.array_equal(ea.mask, eb.mask) and np.array_equal(ea.codes, eb.codes)
            assert (ea.bits, ea.exps, ea.grids) == (eb.bits, eb.exps, eb.grids)
        else:
            assert torch.equal(ea.tensor, eb.tensor)


def test_pipeline_prunes_to_the_rate_and_reports_progress(tensors):
    rec = _Recorder()
    out = pipeline.run(CFG, *tensors, progress=rec)
    quant = [e for e in out.compressed.tensors.values() if isinstance(e, QuantTensor)]
    kept, total = sum(q.kept for q in quant), sum(q.numel for q in quant)
    assert abs(kept / total - 0.1) < 1e-3
    assert rec.seen == rec.total == 2 * 500 + 2 * 250 + 500 + 500
    assert rec.stages[0] == "train epoch 1/2" and rec.stages[-2:] == ["quantize", "quantization-aware 1/1"]
    assert out.figures["test_error_before"] < 0.3
    assert set(out.figures) == {"test_error_before", "test_error_pruned", "test_error_quantized"}
    # the file holds exactly the fake-quantized weights the model was fine-tuned with
    for name, q in out.compressed.tensors.items():
        if isinstance(q, QuantTensor):
            latent = dict(out.model.named_parameters())[name]
            assert torch.equal(q.dequantize(), FakeQuant(q).values(latent.detach()))
    meta = out.compressed.meta  # each fact once: the pipeline config holds the compress config, model and seed
    assert meta["pipeline"]["compress"]["rate"] == 0.9 and meta["pipeline"]["model"] == "lenet300"
    assert set(meta) == {"fisherpack", "pipeline"}


def test_an_interrupted_run_resumes_to_the_same_result(tensors, tmp_path):
    reference = pipeline.run(CFG, *tensors).compressed
    ckpt = tmp_path / "run.ckpt"
    for stop in (600, 1300, 2200):  # mid-training, mid-pruning, mid quantization-aware training
        with pytest.raises(KeyboardInterrupt):
            pipeline.run(CFG, *tensors, checkpoint=ckpt, progress=_Recorder(stop_after=stop))
        assert ckpt.exists()
    rec = _Recorder()
    resumed = pipeline.run(CFG, *tensors, checkpoint=ckpt, progress=rec)
    assert rec.done == 2 * 500 + 2 * 250 + 500  # resumed at the start of the QAT epoch
    _same(reference, resumed.compressed)


def test_a_checkpoint_of_other_settings_is_refused(tensors, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    pipeline.run(CFG.replace(rounds=1), *tensors, checkpoint=ckpt, until="train")
    with pytest.raises(FisherpackError, match="belongs to a run with other settings"):
        pipeline.run(CFG, *tensors, checkpoint=ckpt)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(FisherpackError, match="unreadable"):
        pipeline.run(CFG, *tensors, checkpoint=ckpt)


@pytest.mark.parametrize("source", ["empirical", "sampled"])
def test_data_fisher_estimators_run_in_the_pipeline(tensors, source):
    out = pipeline.run(CFG.replace(fisher=source, fisher_samples=64, rounds=1), *tensors)
    assert out.compressed.meta["pipeline"]["fisher"] == source


def test_finetune_epochs_above_one_are_all_run(tensors):
    """Issue 16 item 8: finetune_epochs=2.0 ran one epoch per round while the file said 2.0."""
    rec = _Recorder()
    cfg = CFG.replace(epochs=1, finetune_epochs=2.5, final_epochs=0, qat_epochs=0)
    pipeline.run(cfg, *tensors, progress=rec)
    assert rec.seen == rec.total == 500 + 2 * (500 + 500 + 250)
    assert list(dict.fromkeys(s for s in rec.stages if s.startswith("prune")))[:3] == [
        "prune to 68.4% (1/2)",
        "prune to 68.4% (1/2), epoch 2",
        "prune to 68.4% (1/2), epoch 3",
    ]
