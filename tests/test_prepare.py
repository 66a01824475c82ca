"""imnet.tools.prepare: ILSVRC2012's flat validation folder -> val/<wnid>/ symlinks, from either label format."""

import os
import subprocess
import sys

import pytest

from imnet.tools import prepare

# Nine images in three classes, labelled out of order like the real set (file k's class is arbitrary).
WNIDS = ["n01440764", "n02119789", "n09193705"]
TRUTH = {k: WNIDS[(k * 7) % 3] for k in range(1, 10)}  # 1-based image number -> wnid


def image_id(k):
    return f"ILSVRC2012_val_{k:08d}"


def make_flat(folder, numbers):
    folder.mkdir(parents=True, exist_ok=True)
    for k in numbers:
        (folder / f"{image_id(k)}.JPEG").write_bytes(f"image {k}".encode())  # content identifies the file
    return folder


def write_csv(path, numbers):
    rows = ["ImageId,PredictionString"]
    # Real rows carry one or more boxes after the wnid; the class is the first token.
    rows += [f"{image_id(k)},{TRUTH[k]} 10 20 30 40 {TRUTH[k]} 1 2 3 4" for k in numbers]
    path.write_text("\n".join(rows) + "\n")
    return path


def write_devkit(tmp_path, numbers, synset_order):
    """The devkit format: line k holds the 1-based index of image k's class in ``synset_order``."""
    labels = tmp_path / "ground_truth.txt"
    labels.write_text("".join(f"{synset_order.index(TRUTH[k]) + 1}\n" for k in numbers))
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("".join(f"{w} some words, more words\n" for w in synset_order))
    return labels, synsets


def tree(out):
    """{relative link path: content of the file it points to} for everything under ``out``."""
    found = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            assert os.path.islink(path), f"{path} should be a symlink"
            with open(path, "rb") as f:
                found[os.path.relpath(path, out)] = f.read().decode()
    return found


def expected_tree(numbers):
    return {os.path.join(TRUTH[k], f"{image_id(k)}.JPEG"): f"image {k}" for k in numbers}


ALL = list(range(1, 10))


@pytest.mark.parametrize("label_format", ["csv", "devkit"])
def test_arranges_flat_folder_and_is_idempotent(tmp_path, capsys, label_format):
    flat = make_flat(tmp_path / "flat", ALL)
    if label_format == "csv":
        argv = ["--labels", str(write_csv(tmp_path / "LOC_val_solution.csv", ALL))]
    else:
        # A non-sorted class order, like the devkit's meta.mat: indices must go through it, not through sorting.
        labels, synsets = write_devkit(tmp_path, ALL, ["n09193705", "n01440764", "n02119789"])
        argv = ["--labels", str(labels), "--synsets", str(synsets)]
    out = tmp_path / "imagenet" / "val"
    argv = ["val", "--flat", str(flat), "--out", str(out)] + argv

    assert prepare.main(argv) == 0
    assert tree(out) == expected_tree(ALL)
    assert sorted(os.listdir(out)) == WNIDS
    assert "3 classes, 9 links made, 0 already in place" in capsys.readouterr().out

    before = {p: os.readlink(out / p) for p in tree(out)}
    assert prepare.main(argv) == 0  # second run: nothing changes
    assert {p: os.readlink(out / p) for p in tree(out)} == before
    assert "0 links made, 9 already in place" in capsys.readouterr().out


def test_reports_missing_and_extra_files(tmp_path, capsys):
    flat = make_flat(tmp_path / "flat", [1, 2, 3, 4, 5, 6, 7])  # 8 and 9 labelled but absent
    (flat / "stray_photo.jpg").write_bytes(b"not in the labels")
    (flat / "README.txt").write_text("not an image: ignored")
    labels = write_csv(tmp_path / "labels.csv", ALL)
    out = tmp_path / "val"
    assert prepare.main(["val", "--flat", str(flat), "--labels", str(labels), "--out", str(out)]) == 0
    assert tree(out) == expected_tree(range(1, 8))
    err = capsys.readouterr().err
    assert f"2 labelled images are missing from {flat}: '{image_id(8)}', '{image_id(9)}'" in err
    assert "1 files in" in err and "stray_photo.jpg" in err and "README" not in err


def test_module_entry_point(tmp_path):
    """``python -m imnet.tools.prepare`` is the documented command."""
    flat = make_flat(tmp_path / "flat", ALL)
    labels = write_csv(tmp_path / "labels.csv", ALL)
    out = tmp_path / "val"
    result = subprocess.run([sys.executable, "-m", "imnet.tools.prepare", "val", "--flat", str(flat), "--labels",
                             str(labels), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert tree(out) == expected_tree(ALL)


@pytest.mark.parametrize("label_format", ["csv", "devkit"])
def test_label_files_with_a_byte_order_mark_are_read(tmp_path, capsys, label_format):
    """Files saved by Windows editors start with a UTF-8 byte-order mark: it is not part of the header (or of
    the first index, or of the first wnid)."""
    flat = make_flat(tmp_path / "flat", ALL)
    if label_format == "csv":
        files = [write_csv(tmp_path / "labels.csv", ALL)]
        argv = ["--labels", str(files[0])]
    else:
        files = list(write_devkit(tmp_path, ALL, ["n09193705", "n01440764", "n02119789"]))
        argv = ["--labels", str(files[0]), "--synsets", str(files[1])]
    for path in files:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    out = tmp_path / "val"
    assert prepare.main(["val", "--flat", str(flat), "--out", str(out)] + argv) == 0, capsys.readouterr().err
    assert tree(out) == expected_tree(ALL)


def run_bad(tmp_path, capsys, argv):
    code = prepare.main(["val"] + argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    return err


def test_bad_input_is_explained(tmp_path, capsys):
    flat = make_flat(tmp_path / "flat", ALL)
    csv_labels = write_csv(tmp_path / "labels.csv", ALL)
    out = ["--out", str(tmp_path / "val")]

    err = run_bad(tmp_path, capsys, ["--flat", str(tmp_path / "nope"), "--labels", str(csv_labels)] + out)
    assert "is not a directory" in err and "flat validation folder" in err

    err = run_bad(tmp_path, capsys, ["--flat", str(flat), "--labels", str(tmp_path / "nope.csv")] + out)
    assert "cannot read the labels file" in err

    junk = tmp_path / "junk.txt"
    junk.write_text("hello world\n")
    err = run_bad(tmp_path, capsys, ["--flat", str(flat), "--labels", str(junk)] + out)
    assert "cannot recognise the labels file" in err and "ImageId,PredictionString" in err

    devkit_labels, synsets = write_devkit(tmp_path, ALL, WNIDS)
    err = run_bad(tmp_path, capsys, ["--flat", str(flat), "--labels", str(devkit_labels)] + out)
    assert "--synsets" in err  # indices without the class order

    short = tmp_path / "two_synsets.txt"
    short.write_text("n01440764\nn02119789\n")
    err = run_bad(tmp_path, capsys, ["--flat", str(flat), "--labels", str(devkit_labels), "--synsets", str(short)]
                  + out)
    assert "outside 1..2" in err

    other = make_flat(tmp_path / "other", [])
    (other / "dog.jpg").write_bytes(b"x")
    err = run_bad(tmp_path, capsys, ["--flat", str(other), "--labels", str(csv_labels)] + out)
    assert "none of the 9 labelled images" in err


def test_refuses_sorted_synsets_with_devkit_indices(tmp_path, capsys):
    """The devkit's indices follow meta.mat's order; a sorted 1000-wnid list would mislabel almost everything."""
    flat = make_flat(tmp_path / "flat", [1])
    labels = tmp_path / "gt.txt"
    labels.write_text("490\n")
    synsets = tmp_path / "LOC_synset_mapping.txt"
    synsets.write_text("".join(f"n{i:08d} words\n" for i in range(1000)))
    err = run_bad(tmp_path, capsys, ["--flat", str(flat), "--labels", str(labels), "--synsets", str(synsets),
                                     "--out", str(tmp_path / "val")])
    assert "sorted order" in err and "meta.mat" in err


def test_existing_foreign_file_is_not_overwritten(tmp_path, capsys):
    flat = make_flat(tmp_path / "flat", ALL)
    labels = write_csv(tmp_path / "labels.csv", ALL)
    out = tmp_path / "val"
    (out / TRUTH[1]).mkdir(parents=True)
    (out / TRUTH[1] / f"{image_id(1)}.JPEG").write_bytes(b"someone else's file")
    err = run_bad(tmp_path, capsys, ["--flat", str(flat), "--labels", str(labels), "--out", str(out)])
    assert "already exists and is not a link" in err
    assert (out / TRUTH[1] / f"{image_id(1)}.JPEG").read_bytes() == b"someone else's file"


def test_unusable_wnids_and_out_under_a_file_are_explained(tmp_path, capsys):
    """A NUL (or other control character) or a name longer than a folder name can be, in either label format,
    and an --out below a file: exit 2 with the reason, before any link is made."""
    flat = make_flat(tmp_path / "flat", ALL)
    out = ["--out", str(tmp_path / "val")]
    for bad in ("n0144\x000764", "n01440764\x1b", "n" + "0" * 300):
        labels = tmp_path / "labels.csv"
        labels.write_text("ImageId,PredictionString\n" + f"{image_id(1)},{bad} 1 2 3 4\n")
        err = run_bad(tmp_path, capsys, ["--flat", str(flat), "--labels", str(labels)] + out)
        assert ("control character" in err) if len(bad) < 30 else ("more than the 255" in err), err
        devkit_labels, synsets = write_devkit(tmp_path, ALL, WNIDS)
        synsets.write_text(f"{bad}\n{WNIDS[1]}\n{WNIDS[2]}\n")
        err = run_bad(tmp_path, capsys, ["--flat", str(flat), "--labels", str(devkit_labels), "--synsets",
                                         str(synsets)] + out)
        assert "control character" in err or "more than the 255" in err, err
    assert not (tmp_path / "val").exists()

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = run_bad(tmp_path, capsys, ["--flat", str(flat), "--labels", str(write_csv(tmp_path / "ok.csv", ALL)),
                                     "--out", str(a_file / "val")])
    assert "which is a file" in err
