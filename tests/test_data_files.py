"""Your own data (issue 14): ``[data] source = csv | jsonl | parquet | hf-disk`` read into the same
TaskData as the built-in task, and every bad file refused through ``dp-audit train`` with one line
and exit 2 (data is read and validated before any model is built or anything is written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dp_audit.cli import main
from dp_audit.config import DataConfig, run_config_from_dict
from dp_audit.errors import UsageError
from dp_audit.trainers.data import make_task
from tests.test_end_to_end import one_line_error, to_toml
from tests.user_fixtures import sentiment_rows, write_rows

SOURCES = ("csv", "jsonl", "parquet", "hf-disk")
EXT = {"csv": "train.csv", "jsonl": "train.jsonl", "parquet": "train.parquet", "hf-disk": "train_ds"}


def _files(tmp_path: Path, fmt: str, *, n: int = 60, labels: int = 2, **cols) -> dict[str, str]:
    out = {}
    for role, seed, size in (("train", 0, n), ("dev", 1, 12), ("test", 2, 15), ("public", 3, 20)):
        name = EXT[fmt].replace("train", role)
        out[role] = str(write_rows(tmp_path / name, sentiment_rows(size, seed=seed, num_labels=labels), fmt, **cols))
    return out


@pytest.mark.parametrize("fmt", SOURCES)
def test_each_source_reads_the_rows_as_written(tmp_path, fmt):
    """Bug caught: a reader that drops, reorders or retypes rows (e.g. pandas reading a text
    column as numbers, a jsonl reader skipping the last line, hf-disk returning another split):
    each split must equal the rows the fixture wrote, labels as ints."""
    files = _files(tmp_path, fmt, labels=3)
    task = make_task(DataConfig(source=fmt, **files))
    for role, seed, size in (("train", 0, 60), ("dev", 1, 12), ("test", 2, 15), ("public", 3, 20)):
        rows = sentiment_rows(size, seed=seed, num_labels=3)
        split = task.split(role)
        assert split.texts == tuple(r["text"] for r in rows)
        assert split.labels == tuple(r["label"] for r in rows)
        assert all(type(y) is int for y in split.labels)
    assert task.num_labels == 3
    assert task.source["files"]["train"]["sha256"] and task.source["source"] == fmt
    assert set(task.vocab) <= {w for t in task.public.texts for w in t.split()}  # canary words: public only


def test_custom_column_names_and_dataset_dict(tmp_path):
    """Bug caught: column names ignored (always 'text'/'label'), or a DatasetDict folder whose
    'validation' / 'test' / 'public' splits are not used for the roles left empty."""
    import datasets
    import pandas as pd

    def ds(seed, n):
        rows = sentiment_rows(n, seed=seed)
        return datasets.Dataset.from_pandas(pd.DataFrame({"sentence": [r["text"] for r in rows],
                                                          "y": [r["label"] for r in rows]}))
    datasets.DatasetDict({"train": ds(0, 40), "validation": ds(1, 8), "test": ds(2, 9), "public": ds(3, 10)}) \
        .save_to_disk(str(tmp_path / "dd"))
    task = make_task(DataConfig(source="hf-disk", train=str(tmp_path / "dd"), text_column="sentence", label_column="y"))
    assert (len(task.train), len(task.dev), len(task.test), len(task.public)) == (40, 8, 9, 10)
    assert task.dev.texts == tuple(r["text"] for r in sentiment_rows(8, seed=1))


def test_dev_test_cut_from_train_is_seeded_disjoint_and_complete(tmp_path):
    """Bug caught: a cut that overlaps (a test row also trained on), loses rows, ignores the seed
    or the fractions, or is not reproducible (the audit rebuilds the data from the config and
    checks the fingerprint)."""
    path = write_rows(tmp_path / "all.csv", sentiment_rows(100, seed=0), "csv")
    cfg = DataConfig(source="csv", train=str(path), dev_fraction=0.1, test_fraction=0.25, seed=7)
    a, b = make_task(cfg), make_task(cfg)
    assert (len(a.train), len(a.dev), len(a.test)) == (65, 10, 25)
    every = a.train.texts + a.dev.texts + a.test.texts
    assert sorted(every) == sorted(r["text"] for r in sentiment_rows(100, seed=0))
    assert a.train == b.train and a.fingerprint == b.fingerprint
    c = make_task(DataConfig(source="csv", train=str(path), dev_fraction=0.1, test_fraction=0.25, seed=8))
    assert set(c.test.texts) != set(a.test.texts) and c.fingerprint != a.fingerprint
    assert len(a.public) == 0 and a.source["cut"] == {"seed": 7, "dev_fraction": 0.1, "test_fraction": 0.25}


def test_fingerprint_covers_private_content_and_files(tmp_path):
    """Bug caught: a fingerprint of the file names or of the config only (an edited training
    file would keep the fingerprint), or one that misses the dev/test/public files."""
    files = _files(tmp_path, "csv")
    fp0 = make_task(DataConfig(source="csv", **files)).fingerprint
    rows = sentiment_rows(60, seed=0)
    rows[5] = {**rows[5], "label": 1 - rows[5]["label"]}
    write_rows(Path(files["train"]), rows, "csv")
    fp1 = make_task(DataConfig(source="csv", **files)).fingerprint
    assert fp1 != fp0
    write_rows(Path(files["public"]), sentiment_rows(21, seed=3), "csv")
    assert make_task(DataConfig(source="csv", **files)).fingerprint != fp1


def test_canaries_go_into_the_private_split_as_for_the_builtin_task(tmp_path, cache_dir):
    """Bug caught: canaries not appended to the private split for file data (or appended to
    dev/test), or labels drawn from 2 classes when the data has K = 3."""
    from dp_audit.trainers.base import prepare
    from tests.user_fixtures import save_tiny_checkpoint

    files = _files(tmp_path, "jsonl", labels=3)
    model = save_tiny_checkpoint(tmp_path / "bert", "bert", [r["text"] for r in sentiment_rows(60, seed=0, num_labels=3)])
    cfg = run_config_from_dict({"data": {"source": "jsonl", **files, "max_length": 16}, "model": {"path": str(model)},
                                "canaries": {"m": 30, "repeat": 2}, "train": {"progress": False}})
    prep = prepare(cfg, cache_root=cache_dir, progress=False)
    members = [c for c in prep.canaries if c.member]
    assert prep.n_train == 60 + 2 * len(members) and 0 < len(members) < 30
    assert int(prep.dev["input_ids"].shape[0]) == 12 and int(prep.test["input_ids"].shape[0]) == 15
    labels = prep.train["labels"].numpy()
    assert list(labels[60:]) == [c.label for c in members] * 2
    assert {c.label for c in prep.canaries} == {0, 1, 2}
    words = {w for c in prep.canaries for w in c.text.split()}
    public_words = {w for r in sentiment_rows(20, seed=3, num_labels=3) for w in r["text"].split()}
    assert words <= public_words  # never words of the private split only (canaries.jsonl is released)


# --------------------------------------------------------------------------- bad inputs -> exit 2

def _train(tmp_path: Path, data: dict, capsys, **sections) -> str:
    cfg = {"data": data, "train": {"progress": False}, "canaries": {"m": 4}, **sections}
    path = tmp_path / "train.toml"
    path.write_text(to_toml(cfg))
    code = main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    err = one_line_error(capsys, 2, code)
    assert not (tmp_path / "run").exists()
    return err


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


BAD = {
    "missing file": ({"source": "csv", "train": "{tmp}/nope.csv"}, "file not found"),
    "missing column": ({"source": "csv", "train": "csv:sentence,label\nhello there,1\n"}, "no column 'text'"),
    "empty text": ({"source": "csv", "train": "csv:text,label\nhello,1\n  ,0\n"}, "row 2: empty text"),
    "nan label": ({"source": "csv", "train": "csv:text,label\nhello,1\nworld,\n"}, "row 2: missing label"),
    "label not integer": ({"source": "csv", "train": "csv:text,label\nhello,pos\n"}, "must be an integer"),
    "label out of range": ({"source": "csv", "train": "csv:text,label\nhello,1\nworld,3\n", "num_labels": 2},
                           "label 3 is not in 0..1"),
    "negative label": ({"source": "csv", "train": "csv:text,label\nhello,-1\n"}, "negative"),
    "corrupt jsonl": ({"source": "jsonl", "train": 'jsonl:{"text": "a", "label": 0}\n{"text": "b", "label": \n'},
                      "line 2: invalid JSON"),
    "jsonl non-string text": ({"source": "jsonl", "train": 'jsonl:{"text": "a", "label": 0}\n{"text": 5, "label": 1}\n'},
                              "line 2: text must be a string"),
    "jsonl float label": ({"source": "jsonl", "train": 'jsonl:{"text": "a", "label": 0.5}\n'}, "must be an integer"),
    "jsonl NaN label": ({"source": "jsonl", "train": 'jsonl:{"text": "a", "label": NaN}\n'}, "missing label"),
    "corrupt parquet": ({"source": "parquet", "train": "raw:PAR1 this is not parquet"}, "cannot read parquet"),
    "not a datasets folder": ({"source": "hf-disk", "train": "dir:"}, "cannot load a datasets.save_to_disk folder"),
    "empty split": ({"source": "jsonl", "train": "jsonl:\n\n"}, "no rows"),
    "duplicate split paths": ({"source": "csv", "train": "csv:text,label\nhello,1\n", "test": "{train}"},
                              "same path"),
    "no public for the tiny backbone": ({"source": "csv", "train": "csv:" + "text,label\n" +
                                         "".join(f"text number {i},{i % 2}\n" for i in range(20))},
                                        "data.public is not given"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_exits_2_with_one_line(tmp_path, capsys, case):
    """Bug caught: a bad file that crashes deep in pandas/pyarrow/torch (exit 4, a traceback),
    trains on garbage (a NaN label cast to a huge integer, a corrupt line skipped silently), or
    exits 1; each message must name the problem (and the row/line where there is one)."""
    data, expected = BAD[case]
    data = dict(data)
    spec = data["train"]
    if spec.startswith(("csv:", "jsonl:", "raw:")):
        kind, body = spec.split(":", 1)
        data["train"] = _write(tmp_path / f"train.{ {'raw': 'parquet'}.get(kind, kind) }", body)
    elif spec == "dir:":
        (tmp_path / "ds").mkdir()
        data["train"] = str(tmp_path / "ds")
    else:
        data["train"] = spec.format(tmp=tmp_path)
    for k in ("test",):
        if data.get(k) == "{train}":
            data[k] = data["train"]
    err = _train(tmp_path, data, capsys)
    assert expected in err, err


def test_public_modes_of_dpflat_need_a_public_split(tmp_path, capsys):
    """Bug caught: DP-Flat's public modes silently training their teacher / selection on an
    empty public split (or crashing) when no public file is given."""
    from tests.user_fixtures import save_tiny_checkpoint

    rows = sentiment_rows(30, seed=0)
    train = str(write_rows(tmp_path / "t.csv", rows, "csv"))
    model = save_tiny_checkpoint(tmp_path / "bert", "bert", [r["text"] for r in rows])
    err = _train(tmp_path, {"source": "csv", "train": train}, capsys, trainer="dpflat",
                 model={"path": str(model), "tuning": "prefix"},
                 dpflat={"distill_mode": "public", "sparse": False})
    assert "dpflat.distill_mode = 'public'" in err and "data.public" in err


def test_config_checks_without_files():
    """Bug caught: split paths silently ignored with the built-in source, a missing train path
    accepted, or fractions that leave no training row."""
    base = {"data": {"source": "builtin", "train": "x.csv"}}
    with pytest.raises(UsageError, match="data.source = 'builtin'"):
        run_config_from_dict(base)
    with pytest.raises(UsageError, match="needs data.train"):
        run_config_from_dict({"data": {"source": "csv"}})
    with pytest.raises(UsageError, match="sum below 1"):
        run_config_from_dict({"data": {"source": "csv", "train": "x", "dev_fraction": 0.6, "test_fraction": 0.5}})
    with pytest.raises(UsageError, match="num_labels"):
        run_config_from_dict({"data": {"source": "csv", "train": "x", "num_labels": 1}})
    assert np.isclose(DataConfig().dev_fraction, 0.1)


def test_builtin_task_unchanged_by_the_dispatch():
    """Bug caught: the source dispatch (or the new DataConfig keys) changing the built-in task,
    whose fingerprint existing manifests record and audits rebuild: the value below is the one
    the code before issue 14 computed for this config."""
    cfg = DataConfig(n_public=50, n_train=40, n_dev=10, n_test=10, vocab_size=100)
    a = make_task(cfg)
    assert a.fingerprint == "594ec4fdf5a4e15b73e68b0ca5e2fa0730dfe54d2770b2f39416d8ccb6477b1f"
    assert a.num_labels == 2 and json.dumps(a.source) == "{}"


def test_the_own_data_example_config_parses():
    """Bug caught: examples/train-own-data.toml (the config docs/trainers.md shows) drifting from
    the config schema (a renamed key would be an 'unknown config key' for users copying it)."""
    from dp_audit.config import load_run_config

    cfg = load_run_config(Path(__file__).resolve().parents[1] / "examples" / "train-own-data.toml")
    assert cfg.data.source == "csv" and cfg.model.path and cfg.model.tuning == "lora"
