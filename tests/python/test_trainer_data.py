"""What ampkit.Trainer reads as data: tensor pairs, Datasets, DataLoaders (workers, shuffle, drop_last,
samplers), lists of batches, custom iterables and one-shot generators; on the handwritten digits."""
from __future__ import annotations

import functools

import pytest
import torch
import tqdm.auto
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import ampkit

BATCH = 128
STEPS = 15  # batches per epoch over the 1797 digits, the last one short (5 samples)


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    return inputs, torch.tensor(digits.target, dtype=torch.long)


def digits():
    """1797 8x8 digits as (inputs [1797, 64], labels [1797]): 14 batches of 128 and a short one of 5."""
    inputs, labels = _digits()
    return inputs.clone(), labels.clone()


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def trainer(seed=0, **kwargs):
    options = {"amp": "bf16", "batch_size": BATCH, "lr": 1e-2, "progress": False, "self_check": False, **kwargs}
    return ampkit.Trainer(mlp(seed), **options)


def batch_list(inputs, labels, order, size=BATCH):
    return [(inputs[order[i:i + size]], labels[order[i:i + size]]) for i in range(0, len(order), size)]


class BatchesOf:
    """A re-iterable without len(): each iter() starts a new pass over the same batches."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        yield from self.batches


class TrainerOrder(torch.utils.data.Sampler):
    """Visits the samples in the order the Trainer uses for a pair of tensors, epoch after epoch."""

    def __init__(self, reference: ampkit.Trainer, count: int):
        self.reference, self.count, self.epoch = reference, count, 0

    def __iter__(self):
        order = self.reference._sample_order(self.count, self.epoch)
        self.epoch += 1
        return iter(order.tolist())

    def __len__(self):
        return self.count


def assert_same_training(a: ampkit.Trainer, b: ampkit.Trainer):
    assert a.history.loss == b.history.loss
    assert a.global_step == b.global_step
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name


# ---- the same training from every kind of input ----

def test_dataloader_in_the_trainers_order_gives_bitwise_the_tensor_pair_training():
    x, y = digits()
    pair = trainer()
    pair.fit((x, y), epochs=3, val_data=(x, y))
    # DataLoader(shuffle=False) with a sampler that visits the samples in the trainer's own order.
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, sampler=TrainerOrder(pair, len(x)))
    loaded = trainer()
    loaded.fit(loader, epochs=3, val_data=DataLoader(TensorDataset(x, y), batch_size=BATCH))
    assert_same_training(pair, loaded)
    for ours, theirs in zip(pair.history.epochs, loaded.history.epochs):
        assert (ours["val_loss"], ours["val_accuracy"]) == (theirs["val_loss"], theirs["val_accuracy"])
    assert loaded.history.epochs[-1]["loss"] < 0.5 * loaded.history.epochs[0]["loss"]


@pytest.mark.parametrize("kind", ["unshuffled DataLoader", "list of batches", "tuple of batches", "custom iterable",
                                  "generator", "DataLoader iterator"])
def test_every_kind_of_batch_source_trains_bitwise_like_the_tensor_pair(kind):
    x, y = digits()
    pair = trainer()
    pair.fit((x, y), epochs=1)
    # The trainer's first-epoch order, laid out in advance, so that plain sources reproduce it.
    order = pair._sample_order(len(x), 0)
    batches = batch_list(x, y, order)
    source = {
        "unshuffled DataLoader": lambda: DataLoader(TensorDataset(x[order], y[order]), batch_size=BATCH, shuffle=False),
        "list of batches": lambda: batches,
        "tuple of batches": lambda: tuple(batches),
        "custom iterable": lambda: BatchesOf(batches),
        "generator": lambda: (batch for batch in batches),
        "DataLoader iterator": lambda: iter(DataLoader(TensorDataset(x[order], y[order]), batch_size=BATCH)),
    }[kind]()
    other = trainer()
    other.fit(source, epochs=1)
    assert_same_training(pair, other)
    assert other.history.epochs[0]["samples"] == len(x) and other.history.epochs[0]["steps"] == STEPS


def test_a_dataset_is_still_batched_and_shuffled_by_the_trainer():
    x, y = digits()
    dataset = trainer()
    dataset.fit(TensorDataset(x, y), epochs=2)
    assert len(dataset.history.loss) == 2 * STEPS and dataset.history.epochs[1]["samples"] == len(x)
    assert dataset.history.epochs[-1]["loss"] < dataset.history.epochs[0]["loss"]


def test_an_iterable_dataset_is_batched_by_the_trainer_in_its_own_order():
    x, y = digits()

    class Samples(IterableDataset):
        def __iter__(self):
            return zip(x, y)

    streamed = trainer()
    streamed.fit(Samples(), epochs=1)
    in_order = trainer()
    in_order.fit(batch_list(x, y, torch.arange(len(x))), epochs=1)
    assert_same_training(streamed, in_order)


def test_a_dataloader_with_two_workers_shuffle_and_a_val_loader_trains():
    x, y = digits()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, num_workers=2)
    val_loader = DataLoader(TensorDataset(x, y), batch_size=256, num_workers=2)
    run = trainer()
    history = run.fit(loader, epochs=3, val_data=val_loader)
    assert len(history.loss) == 3 * STEPS and [e["samples"] for e in history.epochs] == [len(x)] * 3
    assert history.epochs[-1]["loss"] < 0.5 * history.epochs[0]["loss"]
    assert history.epochs[-1]["val_accuracy"] > 0.85
    assert run.evaluate(val_loader) == {"loss": history.epochs[-1]["val_loss"],
                                        "accuracy": history.epochs[-1]["val_accuracy"]}


def test_a_fresh_generator_per_epoch_continues_training():
    x, y = digits()
    run = trainer()
    for epoch in range(3):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        run.fit((batch for batch in batch_list(x, y, order)), epochs=run.epoch + 1)
    assert run.epoch == 3 and len(run.history.loss) == 3 * STEPS
    assert run.history.epochs[-1]["loss"] < 0.5 * run.history.epochs[0]["loss"]
    assert run.evaluate(iter(batch_list(x, y, torch.arange(len(x)))))["accuracy"] > 0.85


# ---- one-shot iterators and bad batches ----

def test_a_generator_asked_for_two_epochs_is_refused_before_any_step():
    x, y = digits()
    run = trainer()
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    generator = (batch for batch in batch_list(x, y, torch.arange(len(x))))
    with pytest.raises(ValueError, match=r"train_data is a one-shot iterator \(generator\): it can be read for one "
                                         r"epoch, but fit\(epochs=2\) has 2 epochs left"):
        run.fit(generator, epochs=2)
    with pytest.raises(ValueError, match=r"val_data is a one-shot iterator \(list_iterator\)"):
        run.fit((x, y), epochs=2, val_data=iter(batch_list(x, y, torch.arange(len(x)))))
    assert run.global_step == 0 and run.epoch == 0 and not run.history.loss
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, before[key])
    # One epoch left (a resumed or stepwise run) is one pass: accepted.
    run.fit(generator, epochs=1)
    assert run.epoch == 1 and len(run.history.loss) == STEPS


def test_a_used_up_generator_never_trains_or_evaluates_zero_batches():
    x, y = digits()
    run = trainer()
    generator = (batch for batch in batch_list(x, y, torch.arange(len(x))))
    run.fit(generator, epochs=1)
    with pytest.raises(ValueError, match=r"train_data is empty: it gave no batches in epoch 2; .*generator is a "
                                         r"one-shot iterator: it was already used up"):
        run.fit(generator, epochs=2)
    assert run.epoch == 1 and len(run.history.epochs) == 1
    with pytest.raises(ValueError, match=r"data is empty: it gave no batches \(generator is a one-shot iterator"):
        run.evaluate(generator)
    tiny = DataLoader(TensorDataset(x[:10], y[:10]), batch_size=BATCH, drop_last=True)
    with pytest.raises(ValueError, match=r"train_data is empty: .*drop_last=True and fewer samples than one batch"):
        run.fit(tiny, epochs=2)
    with pytest.raises(ValueError, match=r"train_data is empty"):
        run.fit(TensorDataset(x[:0], y[:0]), epochs=2)
    assert run.epoch == 1 and run.global_step == STEPS


def test_a_bad_batch_is_named_with_its_index_and_what_it_is():
    x, y = digits()
    good = batch_list(x, y, torch.arange(len(x)))

    def then_bad(bad, at=2):
        yield from good[:at]
        yield bad
        yield from good[at:]

    cases = [
        (then_bad((x[:8], y[:8], y[:8])), r"train_data: batch 2 must be an \(inputs, targets\) pair of tensors, "
                                          r"got a tuple of 3 \(Tensor, Tensor, Tensor\)"),
        (then_bad({"image": x[:8], "label": y[:8]}), r"train_data: batch 2 must be an \(inputs, targets\) pair of "
                                                     r"tensors, got a dict with keys \['image', 'label'\]"),
        (then_bad(x[:8], at=0), r"train_data: batch 0 must be an \(inputs, targets\) pair of tensors, got a "
                                r"torch.float32 Tensor of shape \(8, 64\)"),
        (then_bad((x[:8], [1, 2])), r"train_data: batch 2 must be .* got a tuple of 2 \(Tensor, list\)"),
    ]
    for source, message in cases:
        with pytest.raises(TypeError, match=message):
            trainer().fit(source, epochs=1)
    with pytest.raises(ValueError, match=r"train_data: batch 1 inputs must have a batch dimension, got a 0-dim"):
        trainer().fit(then_bad((x[0, 0], y[0]), at=1), epochs=1)

    # A DataLoader whose dataset gives dicts: its first batch is a dict of tensors.
    class Records(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, index):
            return {"image": x[index], "label": y[index]}

    with pytest.raises(TypeError, match=r"val_data: batch 0 must be an \(inputs, targets\) pair of tensors, "
                                        r"got a dict with keys"):
        trainer().fit((x, y), epochs=1, val_data=DataLoader(Records(), batch_size=BATCH))
    with pytest.raises(TypeError, match=r"data: batch 0 must be an \(inputs, targets\) pair"):
        trainer().evaluate(Records())


def test_a_malformed_list_or_a_non_iterable_is_refused_before_any_step():
    x, y = digits()
    good = batch_list(x, y, torch.arange(len(x)))
    run = trainer()
    with pytest.raises(TypeError, match=r"train_data must be an \(inputs, targets\) pair of tensors or a torch "
                                        r"Dataset, got list \(and read as a list of \(inputs, targets\) batches, its "
                                        r"batch 3 is not such a pair of tensors: got a list of 1 \(Tensor\)\)"):
        run.fit(good[:3] + [[x[:4]]] + good[3:], epochs=1)
    for bad, got in [(5, "int 5"), (x, r"a torch.float32 Tensor of shape \(1797, 64\)"), ("digits", "str 'digits'"),
                     ({"inputs": x}, "a dict with keys")]:
        with pytest.raises(TypeError, match=rf"train_data must be an \(inputs, targets\) pair of tensors or a torch "
                                            rf"Dataset, got {got}.* \(nor is that a DataLoader or another iterable"):
            run.fit(bad, epochs=1)
    with pytest.raises(TypeError, match=r"val_data must be .*, got int 3"):
        run.fit(good, epochs=1, val_data=3)
    assert run.global_step == 0


# ---- progress, throughput, save and resume ----

class RecordingBar:
    """Stands in for tqdm: records the total it was given and how many batches went through."""

    bars: list["RecordingBar"] = []

    def __init__(self, iterable, total=None, **kwargs):
        self.iterable, self.total, self.n = iterable, total, 0
        RecordingBar.bars.append(self)

    def __iter__(self):
        for item in self.iterable:
            self.n += 1
            yield item

    def set_postfix(self, **kwargs):
        self.postfix = kwargs

    def close(self):
        pass


def test_progress_shows_batches_per_epoch_where_the_input_has_a_length(monkeypatch):
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    x, y = digits()
    batches = batch_list(x, y, torch.arange(len(x)))
    sources = [((x, y), STEPS), (TensorDataset(x, y), STEPS), (DataLoader(TensorDataset(x, y), batch_size=BATCH), STEPS),
               (DataLoader(TensorDataset(x, y), batch_size=BATCH, drop_last=True), STEPS - 1), (batches, STEPS),
               (BatchesOf(batches), None), ((b for b in batches), None)]
    for source, total in sources:
        RecordingBar.bars.clear()
        trainer(log_every=10).fit(source, epochs=1)
        (bar,) = RecordingBar.bars
        assert bar.total == total and bar.n == (STEPS - 1 if total == STEPS - 1 else STEPS)
        assert float(bar.postfix["samples_per_s"]) > 0


@pytest.mark.parametrize("source,samples,steps", [
    (lambda x, y: (x, y), 1797, STEPS),
    (lambda x, y: DataLoader(TensorDataset(x, y), batch_size=BATCH), 1797, STEPS),
    (lambda x, y: DataLoader(TensorDataset(x, y), batch_size=BATCH, drop_last=True), 1792, STEPS - 1),
    (lambda x, y: DataLoader(TensorDataset(x, y), batch_size=500, shuffle=True, num_workers=2), 1797, 4),
    (lambda x, y: [(x[:10], y[:10]), (x[10:110], y[10:110]), (x[110:117], y[110:117])], 117, 3),
], ids=["tensors", "DataLoader", "drop_last", "workers", "uneven list"])
def test_throughput_counts_the_samples_of_every_batch_including_a_short_last_one(source, samples, steps):
    x, y = digits()
    run = trainer()
    run.fit(source(x, y), epochs=2)
    for summary in run.history.epochs:
        assert (summary["samples"], summary["steps"]) == (samples, steps)
        assert summary["samples_per_s"] == pytest.approx(samples / summary["seconds"], rel=1e-12)
    assert len(run.history.loss) == 2 * steps


@pytest.mark.parametrize("workers", [0, 2])
def test_save_and_resume_with_a_shuffling_dataloader_continues_from_the_saved_epoch(tmp_path, workers):
    x, y = digits()

    def loader():
        # Shuffled from torch's global generator, whose state the checkpoint holds.
        return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, num_workers=workers)

    straight = trainer()
    straight.fit(loader(), epochs=3)

    first = trainer()
    first.fit(loader(), epochs=2)
    first.save(tmp_path / "ckpt.pt")
    resumed = trainer(seed=123).resume(tmp_path / "ckpt.pt")
    assert resumed.epoch == 2 and resumed.global_step == 2 * STEPS
    resumed.fit(loader(), epochs=3)
    assert [e["epoch"] for e in resumed.history.epochs] == [1, 2, 3]
    assert_same_training(straight, resumed)
