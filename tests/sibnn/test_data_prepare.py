"""sibnn.data.prepare: short side 256, both val layouts, resumable, webdataset shards with DALI's index format."""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from sibnn.data.prepare import list_jobs, main, prepare, write_wds_index
from sibnn.data.synthetic import write_synthetic_imagenet


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_synthetic_imagenet(tmp_path_factory.mktemp("raw"), classes=3, per_class=3, val_per_class=2, seed=2)


def sizes(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): Image.open(p).size for p in sorted(root.glob("*/*/*.JPEG"))}


def test_every_image_is_resized_to_short_side_256_keeping_the_aspect_ratio(raw, tmp_path):
    stats = prepare(raw, tmp_path, workers=2, progress=False)
    before, after = sizes(raw), sizes(tmp_path)
    assert stats == {"resized": 15, "skipped": 0, "failed": []}
    assert before.keys() == after.keys() and len(after) == 15
    for name, (w, h) in after.items():
        w0, h0 = before[name]
        assert min(w, h) == 256
        assert abs(w / h - w0 / h0) < 0.01
    assert {w < h for w, h in after.values()} == {True, False}   # portrait and landscape images both covered


def test_a_second_run_does_nothing_and_an_interrupted_one_is_finished(raw, tmp_path):
    prepare(raw, tmp_path, workers=1, progress=False)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/*.JPEG")}
    assert prepare(raw, tmp_path, workers=1, progress=False) == {"resized": 0, "skipped": 15, "failed": []}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/*.JPEG")} == mtimes
    # simulate a crash: one output never renamed into place, a stray temporary left behind
    lost = sorted(tmp_path.glob("train/*/*.JPEG"))[4]
    lost.rename(lost.with_name(lost.name + ".tmp999"))
    assert prepare(raw, tmp_path, workers=1, progress=False) == {"resized": 1, "skipped": 14, "failed": []}
    assert min(Image.open(lost).size) == 256


def test_flat_val_folder_is_sorted_into_classes_with_a_labels_file(raw, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw / "train", src / "train")
    (src / "val").mkdir()
    lines = ["# file wnid"]
    for p in sorted(raw.glob("val/*/*.JPEG")):
        shutil.copy(p, src / "val" / p.name)
        lines.append(f"{p.name} {p.parent.name}")
    (src / "val_labels.txt").write_text("\n".join(lines) + "\n")
    prepare(src, tmp_path / "out", workers=1, progress=False)
    assert sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").glob("val/*/*.JPEG")) == \
        sorted(p.relative_to(raw) for p in raw.glob("val/*/*.JPEG"))


def test_kaggle_val_solution_csv_is_accepted(raw, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw / "train", src / "train")
    (src / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for p in sorted(raw.glob("val/*/*.JPEG")):
        shutil.copy(p, src / "val" / p.name)
        rows.append(f"{p.stem},{p.parent.name} 10 20 200 300 {p.parent.name} 1 2 3 4")
    (src / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    jobs, classes = list_jobs(src, tmp_path / "out", None)
    val = {d.parent.name + "/" + d.name for s, d in jobs if d.parent.parent.name == "val"}
    assert val == {p.parent.name + "/" + p.name for p in raw.glob("val/*/*.JPEG")}
    assert classes == sorted(p.name for p in (raw / "train").iterdir())


def test_flat_val_without_labels_file_stops_with_a_message(raw, tmp_path):
    shutil.copytree(raw / "train", tmp_path / "train")
    (tmp_path / "val").mkdir()
    shutil.copy(next(raw.glob("val/*/*.JPEG")), tmp_path / "val")
    with pytest.raises(SystemExit, match="is flat .*--val-labels"):
        list_jobs(tmp_path, tmp_path / "out", None)


def test_webdataset_shards_hold_every_sample_and_an_index_identical_to_dalis_tool(raw, tmp_path):
    main(["--src", str(raw), "--out", str(tmp_path), "--webdataset", "--shard-size", "4", "--workers", "1"])
    tars = sorted((tmp_path / "wds" / "train").glob("*.tar"))
    assert [t.name for t in tars] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]  # 9 = 4+4+1
    keys = []
    for t in tars:
        with tarfile.open(t) as tf:
            names = tf.getnames()
        keys += [n[:-4] for n in names if n.endswith(".jpg")]
        assert len(names) == 2 * len([n for n in names if n.endswith(".cls")])
    assert sorted(keys) == sorted(p.stem for p in (tmp_path / "train").glob("*/*.JPEG"))
    assert (tmp_path / "wds" / "classes.txt").read_text().split() == ["n00000000", "n00000001", "n00000002"]
    # DALI's own wds2idx tool writes the same index for our tar
    wds2idx = pytest.importorskip("wds2idx")
    ref = tmp_path / "ref.idx"
    with wds2idx.IndexCreator(str(tars[0]), str(ref), verbose=False) as ic:
        ic.create_index()
    assert ref.read_text() == tars[0].with_suffix(".idx").read_text()
    # rewriting the index is idempotent
    assert write_wds_index(tars[0], tmp_path / "again.idx") == 4
    assert (tmp_path / "again.idx").read_text() == ref.read_text()
