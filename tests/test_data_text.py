"""Text data: sources, the fixed Rotten Tomatoes split, clear errors, length-bucketed batches."""

import bz2
import importlib.util
import json

import pytest
import torch
from text_helpers import toy_rows, write_csv, write_vocab

from kdistill.config import TextDataConfig
from kdistill.data.text import UNLABELED, TextBatches, build_text_data, encode
from kdistill.errors import DataError
from kdistill.models.text import load_tokenizer


def test_rotten_tomatoes_has_a_fixed_seeded_split():
    cfg = TextDataConfig(dataset="rotten_tomatoes")
    a, b = build_text_data(cfg), build_text_data(cfg)
    assert a.class_names == ["fresh", "rotten"]
    assert len(a.train) + len(a.val) + len(a.test) == 12808  # critics' snippets, plots dropped
    assert a.test.texts == b.test.texts and a.val.texts == b.val.texts
    assert abs(len(a.test) - 1281) <= 1 and abs(len(a.val) - 1281) <= 1
    other = build_text_data(cfg.model_copy(update={"split_seed": 1}))
    assert other.test.texts != a.test.texts


def test_csv_and_jsonl_with_configured_columns(tmp_path):
    rows = [{"review": r["text"], "y": r["label"]} for r in toy_rows(40)]
    write_csv(tmp_path / "d.csv", rows, columns=("review", "y"))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for kind in ("csv", "jsonl"):
        cfg = TextDataConfig(dataset=kind, path=str(tmp_path / f"d.{kind}"), text_column="review",
                             label_column="y", val_fraction=0.25, test_fraction=0.25)
        data = build_text_data(cfg)
        assert data.class_names == ["neg", "pos"]
        assert (len(data.train), len(data.val), len(data.test)) == (20, 10, 10)


def test_separate_test_file_and_explicit_classes(tmp_path):
    write_csv(tmp_path / "train.csv", toy_rows(20))
    write_csv(tmp_path / "test.csv", toy_rows(6, seed=1))
    cfg = TextDataConfig(dataset="csv", path=str(tmp_path / "train.csv"), test_path=str(tmp_path / "test.csv"),
                         val_fraction=0.0, classes=["pos", "neg"])
    data = build_text_data(cfg)
    assert data.val is None and len(data.test) == 6 and len(data.train) == 20
    assert data.train.labels[0].item() == 0  # "pos" is class 0 as listed


@pytest.mark.parametrize("column, field", [("text_column", "text_column"), ("label_column", "label_column")])
def test_missing_column_names_the_field(tmp_path, column, field):
    write_csv(tmp_path / "d.csv", toy_rows(10))
    cfg = TextDataConfig(dataset="csv", path=str(tmp_path / "d.csv"), **{column: "nope"})
    with pytest.raises(DataError, match=rf"no column 'nope' \(data.{field}\).*text, label"):
        build_text_data(cfg)


def test_label_outside_the_class_set(tmp_path):
    write_csv(tmp_path / "d.csv", toy_rows(10))
    cfg = TextDataConfig(dataset="csv", path=str(tmp_path / "d.csv"), classes=["pos", "neutral"])
    with pytest.raises(DataError, match=r"label 'neg', outside the class set \['pos', 'neutral'\]"):
        build_text_data(cfg)


def test_empty_text_is_refused(tmp_path):
    rows = toy_rows(10)
    rows[3]["text"] = "   "
    write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match="row 3 has an empty text"):
        build_text_data(TextDataConfig(dataset="csv", path=str(tmp_path / "d.csv")))


def test_missing_file_and_missing_datasets_package(tmp_path):
    with pytest.raises(DataError, match="data.path .* does not exist"):
        build_text_data(TextDataConfig(dataset="csv", path=str(tmp_path / "none.csv")))
    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(DataError, match="pip install datasets"):
            build_text_data(TextDataConfig(dataset="hf", path=str(tmp_path)))


def _encoded(tmp_path, n=200):
    write_csv(tmp_path / "d.csv", toy_rows(n))
    data = build_text_data(TextDataConfig(dataset="csv", path=str(tmp_path / "d.csv")))
    tok = load_tokenizer(str(write_vocab(tmp_path)))
    return encode(data, tok, max_length=16, teacher_tokenizer=tok)


def test_batches_are_deterministic_per_seed_and_epoch_and_cover_the_split(tmp_path):
    data = _encoded(tmp_path)
    batches = TextBatches(data.train, 8, shuffle=True, seed=3, pool_batches=4)
    epoch0 = [b["index"].tolist() for b in batches]
    assert epoch0 == [b["index"].tolist() for b in TextBatches(data.train, 8, shuffle=True, seed=3, pool_batches=4)]
    batches.set_epoch(1)
    epoch1 = [b["index"].tolist() for b in batches]
    assert epoch1 != epoch0
    assert sorted(sum(epoch0, [])) == list(range(len(data.train))) and len(epoch0) == len(batches)


def test_dynamic_padding_and_grouping_by_length(tmp_path):
    data = _encoded(tmp_path)
    lengths = torch.tensor([len(s) for s in data.train.ids])
    padded = 0
    for b in TextBatches(data.train, 8, shuffle=True, seed=0, pool_batches=10):
        real = b["attention_mask"].sum(-1)
        assert b["input_ids"].shape[1] == real.max()  # padded to the batch's longest text only
        assert torch.equal(real, lengths[b["index"]])
        assert torch.equal(b["labels"], data.train.labels[b["index"]])
        assert torch.equal(b["teacher_attention_mask"], b["attention_mask"])
        padded += int((1 - b["attention_mask"]).sum())
    random_padding = sum(int(lengths[idx].max() * len(idx) - lengths[idx].sum())
                         for idx in torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).split(8))
    assert padded < random_padding


def test_numeric_labels_keep_numeric_order(tmp_path):
    rows = [{"text": r["text"], "label": 10 if r["label"] == "pos" else 2} for r in toy_rows(12)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = build_text_data(TextDataConfig(dataset="jsonl", path=str(tmp_path / "d.jsonl")))
    assert data.class_names == ["2", "10"]


def test_unlabeled_texts_from_the_rest_of_train_and_from_a_file(tmp_path):
    write_csv(tmp_path / "d.csv", toy_rows(100))
    extra = [{"text": f"good film number {i}"} for i in range(7)]
    with bz2.open(tmp_path / "extra.jsonl.bz2", "wt") as fh:  # compressed JSONL reads like plain
        fh.write("".join(json.dumps(r) + "\n" for r in extra))
    full = build_text_data(TextDataConfig(dataset="csv", path=str(tmp_path / "d.csv")))
    cfg = TextDataConfig(dataset="csv", path=str(tmp_path / "d.csv"), limit_train=30, unlabeled_from_train=True)
    data = build_text_data(cfg)
    assert data.train.texts == full.train.texts[:30]
    assert data.unlabeled.texts == full.train.texts[30:]
    assert (data.unlabeled.labels == UNLABELED).all()
    both = build_text_data(cfg.model_copy(update={"unlabeled_path": str(tmp_path / "extra.jsonl.bz2"),
                                                  "limit_unlabeled": 55}))
    assert len(both.unlabeled) == 55 and both.unlabeled.texts[50] == "good film number 0" and both.identity != data.identity
    transfer = both.transfer_set()
    assert transfer.texts == both.train.texts + both.unlabeled.texts
    assert torch.equal(transfer.labels[:30], both.train.labels)
    # a file alone; its own label column, if any, is ignored
    write_csv(tmp_path / "u.csv", toy_rows(5, seed=2))
    only_file = build_text_data(TextDataConfig(dataset="csv", path=str(tmp_path / "d.csv"),
                                               unlabeled_path=str(tmp_path / "u.csv")))
    assert len(only_file.unlabeled) == 5 and (only_file.unlabeled.labels == UNLABELED).all()
    tok = load_tokenizer(str(write_vocab(tmp_path)))
    encode(only_file, tok, max_length=16, unlabeled=False)  # a run without a teacher
    assert only_file.unlabeled.ids is None and len(only_file.train.ids) == len(only_file.train)
    encode(only_file, tok, max_length=16)
    assert len(only_file.unlabeled.ids) == 5


@pytest.mark.parametrize("write, change, message", [
    (lambda p: p.write_text("{\"review\": \"fine\"}\n"), {}, r"no column 'text' \(data.text_column\).*review"),
    (lambda p: p.write_text("{\"text\": \"fine\"}\n{\"text\": \" \"}\n"), {}, "row 1 has an empty text"),
    (lambda p: None, {}, "does not exist"),
    (lambda p: p.write_text("x"), {"unlabeled_path": "extra.txt"}, "must be a .csv or .jsonl"),
])
def test_unlabeled_file_errors_name_the_field(tmp_path, write, change, message):
    write_csv(tmp_path / "d.csv", toy_rows(10))
    write(tmp_path / "extra.jsonl")
    unlabeled = str(tmp_path / change.get("unlabeled_path", "extra.jsonl"))
    (tmp_path / "extra.txt").write_text("x")
    with pytest.raises(DataError, match=r"data.unlabeled_path.*" + message):
        build_text_data(TextDataConfig(dataset="csv", path=str(tmp_path / "d.csv"), unlabeled_path=unlabeled))


def test_unlabeled_from_train_needs_limit_train():
    with pytest.raises(ValueError, match="set data.limit_train"):
        TextDataConfig(dataset="rotten_tomatoes", unlabeled_from_train=True)


def test_hugging_face_dataset_folders(tmp_path):
    """data.dataset hf: a DatasetDict saved with save_to_disk (its validation split becomes val,
    ClassLabel indices become class names) and a single Dataset (val and test split off)."""
    datasets = pytest.importorskip("datasets")  # the `datasets` extra; ./kd test installs it
    rows = toy_rows(60)
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    as_dataset = lambda rs: datasets.Dataset.from_dict(
        {"sentence": [r["text"] for r in rs], "label": [int(r["label"] == "pos") for r in rs]}, features=features)
    datasets.DatasetDict({"train": as_dataset(rows[:40]), "validation": as_dataset(rows[40:50]),
                          "test": as_dataset(rows[50:])}).save_to_disk(str(tmp_path / "dict"))
    data = build_text_data(TextDataConfig(dataset="hf", path=str(tmp_path / "dict"), text_column="sentence"))
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 10)
    assert data.class_names == ["neg", "pos"] and data.train.texts[0] == rows[0]["text"]
    assert [data.class_names[i] for i in data.train.labels[:4]] == [r["label"] for r in rows[:4]]
    as_dataset(rows).save_to_disk(str(tmp_path / "single"))
    single = build_text_data(TextDataConfig(dataset="hf", path=str(tmp_path / "single"), text_column="sentence",
                                            val_fraction=0.2, test_fraction=0.2))
    assert (len(single.train), len(single.val), len(single.test)) == (36, 12, 12)
    with pytest.raises(DataError, match=r"no column 'text' \(data.text_column\)"):
        build_text_data(TextDataConfig(dataset="hf", path=str(tmp_path / "dict")))


@pytest.mark.parametrize("shuffle", [True, False])
def test_rank_shards_are_the_one_process_double_batch_per_step(tmp_path, shuffle):
    """torchrun: 2 processes x batch b see, step by step, the samples of 1 process x batch 2b."""
    data = _encoded(tmp_path, n=203)  # an odd split: the last global batch is padded by wrapping
    one = TextBatches(data.train, 8, shuffle=shuffle, seed=4, pool_batches=3)
    ranks = [TextBatches(data.train, 4, shuffle=shuffle, seed=4, pool_batches=3, rank=r, world_size=2)
             for r in (0, 1)]
    for epoch in (0, 2):
        for b in (one, *ranks):
            b.set_epoch(epoch)
        steps = [list(zip(*rank)) for rank in ([one], ranks)]
        assert len(ranks[0]) == len(ranks[1]) == len(one) == len(steps[0]) == len(steps[1])
        for (whole,), (r0, r1) in zip(*steps):
            assert len(r0["index"]) == len(r1["index"])
            together = torch.cat([r0["index"], r1["index"]]).tolist()
            assert set(together) == set(whole["index"].tolist())
            if len(whole["index"]) % 2 == 0:
                assert sorted(together) == sorted(whole["index"].tolist())
