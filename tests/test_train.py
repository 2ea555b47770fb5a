import threading

import torch

from fisherpack import data, models, train
from fisherpack.train import epoch_images, evaluate, shift_images, train_epoch


def _synthetic():
    ds = data.synthetic(600, 200, seed=0)
    return (
        data.to_tensor(ds.train_images),
        torch.as_tensor(ds.train_labels).long(),
        data.to_tensor(ds.test_images),
        torch.as_tensor(ds.test_labels).long(),
    )


def test_training_learns_the_synthetic_set():
    x, y, xt, yt = _synthetic()
    torch.manual_seed(0)
    model = models.build("lenet300")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = evaluate(model, xt, yt)[0]
    for epoch in range(3):
        train_epoch(model, opt, x, y, batch_size=32, seed=0, epoch=epoch)
    after = evaluate(model, xt, yt)[0]
    assert before > 0.5 and after < 0.2


def test_masks_stay_applied_through_fine_tuning():
    x, y, _, _ = _synthetic()
    model = models.build("lenet300")
    mask = torch.rand(300, 784) > 0.9
    with torch.no_grad():
        model.fc1.weight.mul_(mask)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []
    train_epoch(
        model,
        opt,
        x,
        y,
        batch_size=50,
        seed=0,
        epoch=0,
        masks={"fc1.weight": mask},
        on_batch=lambda n, _: seen.append(n),
    )
    assert torch.all(model.fc1.weight[~mask] == 0)
    assert torch.all(opt.state[model.fc1.weight]["exp_avg_sq"][~mask] == 0)
    assert sum(seen) == 600 == epoch_images(600, 50)


def test_training_is_deterministic_and_fraction_limits_batches():
    x, y, _, _ = _synthetic()
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = models.build("lenet300")
        opt = torch.optim.Adam(model.parameters())
        seen: list[int] = []
        train_epoch(
            model, opt, x, y, batch_size=64, seed=1, epoch=2, fraction=0.3, on_batch=lambda n, _, s=seen: s.append(n)
        )
        states.append(model.fc1.weight.detach().clone())
        assert len(seen) == 3 and sum(seen) == epoch_images(600, 64, 0.3) == 192
    assert torch.equal(states[0], states[1])


def test_shift_images_moves_each_image_by_its_own_offset():
    x = torch.zeros(3, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0  # a dot in the centre of each image
    out = shift_images(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    positions = [tuple((img[0] == 1).nonzero()[0].tolist()) for img in out]
    assert all(0 <= r <= 4 and 0 <= c <= 4 for r, c in positions)
    assert len(set(positions)) > 1  # not all the same offset
    assert torch.equal(out.sum((1, 2, 3)), torch.ones(3))


_SOFT_TARGETS = train.soft_targets


class _NoisyTeacher(torch.nn.Module):
    """A teacher that draws random numbers in eval mode too."""

    def __init__(self):
        super().__init__()
        self.net = models.build("lenet5")

    def forward(self, x):
        return self.net(x + 0.01 * torch.randn_like(x))


def _distilled(ahead: bool, monkeypatch, noisy: bool = False) -> tuple[torch.Tensor, list[str], float]:
    """LeNet-5 weights after a shifted, distilled epoch on the synthetic set; the threads that
    computed the teacher's targets; the epoch's loss."""
    x, y, _, _ = _synthetic()
    torch.manual_seed(1)
    teacher = (_NoisyTeacher() if noisy else models.build("lenet5")).eval()
    model = models.build("lenet5")
    threads = []

    def spy(recipe, xb):
        threads.append(threading.current_thread().name)
        return _SOFT_TARGETS(recipe, xb)

    monkeypatch.setattr(train, "_teacher_ahead", lambda recipe: ahead)
    monkeypatch.setattr(train, "soft_targets", spy)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    recipe = train.Recipe(teacher=teacher, distill=0.5, augment=2)
    loss = train_epoch(model, opt, x, y, batch_size=64, seed=0, epoch=1, fraction=0.5, recipe=recipe)
    return model.conv1.weight.detach().clone(), threads, loss


def test_teacher_targets_computed_ahead_give_the_same_weights_bit_for_bit(monkeypatch):
    """With a core to spare, the teacher's targets for the next batch are computed on a second
    thread while this batch trains: the same operations, so the same weights to the bit."""
    serial, serial_threads, serial_loss = _distilled(False, monkeypatch)
    ahead, ahead_threads, ahead_loss = _distilled(True, monkeypatch)
    assert torch.equal(serial, ahead) and serial_loss == ahead_loss
    main = threading.main_thread().name
    assert serial_threads == [main] * 5  # the first half of 10 batches, each once
    # first a probe on this thread (does the teacher draw random numbers?), then every batch ahead
    assert ahead_threads[0] == main and len(ahead_threads) == 6
    assert all(t.startswith("fisherpack-teacher") for t in ahead_threads[1:])


def test_a_teacher_that_draws_random_numbers_stays_in_the_step(monkeypatch):
    """Two threads drawing from torch's one generator would make the weights depend on timing: such
    a teacher's targets are computed in the step, in their usual order, as without a spare core."""
    serial, _, _ = _distilled(False, monkeypatch, noisy=True)
    ahead, threads, _ = _distilled(True, monkeypatch, noisy=True)
    assert torch.equal(serial, ahead)
    assert threads == [threading.main_thread().name] * 6  # the probe, then each of 5 batches in its step


def test_teacher_ahead_only_with_a_spare_core_and_one_process(monkeypatch):
    teacher = models.build("lenet5").eval()
    recipe = train.Recipe(teacher=teacher, distill=0.5)
    monkeypatch.setattr(train.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(train.os, "cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert train._teacher_ahead(recipe)
        assert not train._teacher_ahead(train.Recipe(teacher=teacher, distill=0.0))
        assert not train._teacher_ahead(train.PLAIN)
        torch.set_num_threads(2)
        assert not train._teacher_ahead(recipe)  # no core left for it
        torch.set_num_threads(1)
        monkeypatch.setattr(train.dist, "world_size", lambda: 2)
        assert not train._teacher_ahead(recipe)  # under DDP every rank has its cores in use
    finally:
        torch.set_num_threads(threads)


def test_an_epoch_of_no_batches_never_runs_the_teacher(monkeypatch):
    x, y, _, _ = _synthetic()
    calls = []
    monkeypatch.setattr(train, "_teacher_ahead", lambda recipe: True)
    monkeypatch.setattr(train, "soft_targets", lambda recipe, xb: calls.append(len(xb)))
    model = models.build("lenet5")
    recipe = train.Recipe(teacher=models.build("lenet5").eval(), distill=0.5)
    opt = torch.optim.Adam(model.parameters())
    assert train_epoch(model, opt, x, y, batch_size=64, seed=0, epoch=0, fraction=0.0, recipe=recipe) == 0.0
    assert calls == []  # not even the probe
