"""Arrange ILSVRC2012's flat validation folder into class folders.

ImageNet's validation images ship as one flat folder of 50,000 files
(``ILSVRC2012_val_00000001.JPEG`` ... ``ILSVRC2012_val_00050000.JPEG``) with the labels in a separate file,
while ImageFolder-style loaders (``imnet.run.data``, torchvision, timm) expect ``val/<wnid>/<file>``. This module
builds that tree with symbolic links, so it costs no disk space and leaves the original files untouched::

    python -m imnet.tools.prepare val --flat ILSVRC2012_img_val --labels LOC_val_solution.csv --out /data/imagenet/val
    python -m imnet.tools.prepare val --flat ILSVRC2012_img_val --labels ILSVRC2012_validation_ground_truth.txt \\
        --synsets devkit_synsets.txt --out /data/imagenet/val

Two label formats are understood, detected from the file's first line:

1. The ground-truth CSV of the Kaggle ImageNet localization challenge (``LOC_val_solution.csv``)::

       ImageId,PredictionString
       ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295

   The class of an image is the first token of its PredictionString (all boxes of an image share one class).

2. The devkit's ``ILSVRC2012_validation_ground_truth.txt``: one 1-based class index per line, line k being
   the label of ``ILSVRC2012_val_{k:08d}``. The index is the devkit's ``ILSVRC2012_ID``, so ``--synsets`` must
   list the wnids in *that* order (one per line; only the first token of a line is read). Beware: this order
   is the one of the devkit's ``meta.mat`` (ID 1 is n02119789, "kit fox"), not the sorted order of
   ``LOC_synset_mapping.txt`` or ``synset_words.txt`` (line 1: n01440764, "tench"). Pairing the devkit indices
   with a sorted list would silently mislabel almost every image, so a sorted 1000-class list is refused.

The command is idempotent: links already in place are kept, so running it twice changes nothing. It reports
labelled files that are missing from the flat folder and files of the flat folder that have no label, and
exits with status 2 and a one-paragraph message on bad input (like the rest of imnet).

It imports only the standard library and imnet.run.folders (itself standard library only), so it runs without
torch; the image extensions are imnet.run.folders' list, the one the datasets use.
"""

import argparse
import collections
import csv
import os
import sys

from imnet.run.errors import UsageError
from imnet.run.folders import IMG_EXTENSIONS as IMAGE_EXTENSIONS
SHOW = 10  # how many missing / extra names a report lists before summarising the rest


class PrepareError(UsageError):
    """Bad input: the message says what is wrong and how to fix it (printed without a traceback, exit 2)."""


def _listing(names, show=SHOW):
    """``a, b, c (and 7 more)``: a short list for messages about possibly thousands of names."""
    names = sorted(names)
    text = ", ".join(names[:show])
    return text + (f" (and {len(names) - show} more)" if len(names) > show else "")


NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


def _valid_wnid(wnid, where):
    """A class name becomes a folder name: refuse anything that is not a single plain path component
    (separators, ".", "..", hidden names, control characters such as NUL, more than NAME_MAX bytes)."""
    if not wnid or wnid in (".", "..") or "/" in wnid or "\\" in wnid or wnid.startswith("."):
        raise PrepareError(f"{where}: {wnid!r} is not usable as a class folder name.")
    if any(ord(c) < 32 or ord(c) == 127 for c in wnid):
        raise PrepareError(f"{where}: {wnid!r} holds a control character (NUL, newline...), which no class "
                           f"folder name can hold. Check that the file is a plain-text list of wnids.")
    if len(os.fsencode(wnid)) > NAME_MAX:
        raise PrepareError(f"{where}: {wnid[:40]!r}... is {len(os.fsencode(wnid))} bytes long, more than the "
                           f"{NAME_MAX} a folder name can have. ImageNet wnids look like n01440764.")
    return wnid


def _check_out(out_dir):
    """--out must be a folder, or creatable as one: its nearest existing ancestor must be a folder."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PrepareError(f"--out {out_dir} exists and is not a directory.")
    parent = os.path.dirname(out_dir)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise PrepareError(f"--out {out_dir} lies under {parent}, which is a file, not a folder. Pass a folder "
                           f"path such as /data/imagenet/val.")


def read_synsets(path):
    """Class names in index order: the first whitespace-separated token of each non-empty line."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Windows editors) is not text
            lines = [line.split() for line in f]
    except OSError as e:
        raise PrepareError(f"cannot read the synsets file {path}: {e.strerror or e}.") from None
    synsets = [_valid_wnid(tokens[0], f"{path}") for tokens in lines if tokens]
    if not synsets:
        raise PrepareError(f"the synsets file {path} is empty; it should hold one wnid per line.")
    duplicates = [wnid for wnid, n in collections.Counter(synsets).items() if n > 1]
    if duplicates:
        raise PrepareError(f"the synsets file {path} lists these wnids more than once: {_listing(duplicates)}.")
    return synsets


def read_labels(path, synsets_path=None):
    """Return ``{image id: wnid}``, the image id being the file name without its extension.

    The format is recognised from the first line: a CSV header starting with ``ImageId``, or an integer
    (the devkit's one-index-per-line list, which needs ``synsets_path``).
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a byte-order mark is not the header
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"cannot read the labels file {path}: {getattr(e, 'strerror', None) or e}.") from None
    first = text.lstrip().split("\n", 1)[0].strip()
    if first.lower().startswith("imageid"):
        return _read_csv_labels(path, text)
    if first.isdigit():
        if synsets_path is None:
            raise PrepareError(
                f"{path} is a list of class indices (the devkit's ground-truth format), which needs the class "
                "order: pass --synsets FILE with one wnid per line in the devkit's ILSVRC2012_ID order "
                "(or use the ground-truth CSV, LOC_val_solution.csv, which names the wnids directly).")
        return _read_index_labels(path, text, read_synsets(synsets_path), synsets_path)
    raise PrepareError(
        f"cannot recognise the labels file {path}: its first line is {first[:80]!r}. Expected either the "
        "ground-truth CSV (header 'ImageId,PredictionString', e.g. LOC_val_solution.csv) or the devkit's "
        "ILSVRC2012_validation_ground_truth.txt (one class index per line).")


def _read_csv_labels(path, text):
    labels = {}
    reader = csv.reader(text.splitlines())
    header = next(reader)
    if [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise PrepareError(f"{path}: expected the header 'ImageId,PredictionString', found {','.join(header)!r}.")
    for line_number, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        tokens = row[1].split() if len(row) >= 2 else []
        if not tokens:
            raise PrepareError(f"{path}, line {line_number}: no class in {','.join(row)!r}; each row should "
                               "be 'ImageId,wnid ...'.")
        image_id, wnid = os.path.splitext(row[0].strip())[0], _valid_wnid(tokens[0], f"{path}, line {line_number}")
        if labels.setdefault(image_id, wnid) != wnid:
            raise PrepareError(f"{path}: {image_id} is labelled both {labels[image_id]} and {wnid}.")
    return labels


def _read_index_labels(path, text, synsets, synsets_path):
    if len(synsets) == 1000 and synsets == sorted(synsets):
        raise PrepareError(
            f"{synsets_path} lists 1000 wnids in sorted order (like LOC_synset_mapping.txt), but the indices "
            f"in {path} are the devkit's ILSVRC2012_IDs, whose order is that of the devkit's meta.mat (ID 1 is "
            "n02119789, 'kit fox'): this pairing would mislabel almost every image. Use the ground-truth CSV "
            "(LOC_val_solution.csv) instead, or a synsets file in meta.mat's ILSVRC2012_ID order.")
    labels = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            index = int(line)
        except ValueError:
            raise PrepareError(f"{path}, line {line_number}: {line.strip()!r} is not a class index.") from None
        if not 1 <= index <= len(synsets):
            raise PrepareError(f"{path}, line {line_number}: class index {index} is outside 1..{len(synsets)}, "
                               f"the classes listed in {synsets_path}.")
        labels[f"ILSVRC2012_val_{line_number:08d}"] = synsets[index - 1]
    return labels


def arrange_val(flat_dir, labels, out_dir):
    """Link ``flat_dir/<id>.<ext>`` to ``out_dir/<wnid>/<id>.<ext>`` for every labelled image present.

    Returns a report dict: ``linked`` (new links), ``kept`` (already in place), ``missing`` (labelled ids
    with no file), ``extra`` (image files with no label), ``classes`` (number of class folders).
    Links point to absolute paths, so ``out_dir`` may live anywhere.
    """
    if not os.path.isdir(flat_dir):
        raise PrepareError(f"--flat {flat_dir} is not a directory; it should be ILSVRC2012's flat validation "
                           "folder (ILSVRC2012_val_00000001.JPEG, ...).")
    files = {}  # image id -> file name
    for name in sorted(os.listdir(flat_dir)):
        path = os.path.join(flat_dir, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        image_id, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            if image_id in files:
                raise PrepareError(f"{flat_dir} holds two files for image {image_id}: {files[image_id]} and {name}.")
            files[image_id] = name
    present = [i for i in labels if i in files]
    if labels and not present:
        raise PrepareError(
            f"none of the {len(labels)} labelled images is in {flat_dir} (it holds {len(files)} image files; the "
            f"labels name files such as {next(iter(labels))}). Check that --flat and --labels belong together.")

    out_dir = os.path.abspath(out_dir)
    _check_out(out_dir)
    linked = kept = 0
    for image_id in present:
        wnid, name = labels[image_id], files[image_id]
        source = os.path.abspath(os.path.join(flat_dir, name))
        target = os.path.join(out_dir, wnid, name)
        if os.path.islink(target) or os.path.exists(target):
            if os.path.realpath(target) != os.path.realpath(source):
                raise PrepareError(f"{target} already exists and is not a link to {source}; remove it (or choose "
                                   "another --out) and run again.")
            kept += 1
            continue
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(source, target)
        except OSError as e:
            raise PrepareError(f"cannot create {target}: {e.strerror or e}. Check that --out is a folder you can "
                               f"write to.") from None
        linked += 1
    return {
        "linked": linked,
        "kept": kept,
        "missing": sorted(set(labels) - set(files)),
        "extra": sorted(files[i] for i in set(files) - set(labels)),
        "classes": len({labels[i] for i in present}),
    }


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m imnet.tools.prepare",
        description="Arrange ImageNet data into the class-folder layout imnet expects.")
    commands = parser.add_subparsers(dest="command", required=True)
    val = commands.add_parser(
        "val", help="flat ILSVRC2012 validation folder -> val/<wnid>/ (symlinks)",
        description="Link each image of ILSVRC2012's flat validation folder into OUT/<wnid>/. Idempotent.")
    val.add_argument("--flat", required=True, metavar="DIR",
                     help="the flat folder (ILSVRC2012_val_00000001.JPEG ...)")
    val.add_argument("--labels", required=True, metavar="FILE",
                     help="LOC_val_solution.csv (ImageId,PredictionString) or the devkit's "
                          "ILSVRC2012_validation_ground_truth.txt (one 1-based index per line; needs --synsets)")
    val.add_argument("--synsets", metavar="FILE",
                     help="wnids in the devkit's ILSVRC2012_ID order, one per line (first token of each line)")
    val.add_argument("--out", required=True, metavar="DIR",
                     help="the val folder to fill with <wnid>/ class folders, e.g. /data/imagenet/val")
    return parser


def main(argv=None):
    """Command line entry point; returns the exit status (0 done, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        labels = read_labels(args.labels, args.synsets)
        report = arrange_val(args.flat, labels, args.out)
    except UsageError as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    print(f"prepare: {args.out}: {report['classes']} classes, {report['linked']} links made, "
          f"{report['kept']} already in place")
    if report["missing"]:
        print(f"prepare: warning: {len(report['missing'])} labelled images are missing from {args.flat}: "
              f"{_listing(report['missing'])}", file=sys.stderr)
    if report["extra"]:
        print(f"prepare: warning: {len(report['extra'])} files in {args.flat} have no label and were left out: "
              f"{_listing(report['extra'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
