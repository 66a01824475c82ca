"""Arrange ILSVRC2012's flat validation folder into ``val/<wnid>/`` class folders, with symbolic links::

    python -m imnet.tools.prepare val --flat ILSVRC2012_img_val --labels LOC_val_solution.csv --out /data/imagenet/val
    python -m imnet.tools.prepare val --flat ILSVRC2012_img_val --labels ILSVRC2012_validation_ground_truth.txt \\
        --synsets devkit_synsets.txt --out /data/imagenet/val
"""

import argparse
import collections
import csv
import os
import sys

from imnet.run.errors import UsageError
from imnet.run.folders import IMG_EXTENSIONS as IMAGE_EXTENSIONS, short_list

NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


def _listing(names):
    return short_list(sorted(names), 10)


def _valid_wnid(wnid, where):
    if not wnid or wnid in (".", "..") or "/" in wnid or "\\" in wnid or wnid.startswith("."):
        raise UsageError(f"{where}: {wnid!r} is not usable as a class folder name.")
    if any(ord(c) < 32 or ord(c) == 127 for c in wnid):
        raise UsageError(f"{where}: {wnid!r} holds a control character; check that the file is a plain-text list "
                         f"of wnids.")
    if len(os.fsencode(wnid)) > NAME_MAX:
        raise UsageError(f"{where}: {wnid[:40]!r}... is {len(os.fsencode(wnid))} bytes long, more than the "
                         f"{NAME_MAX} a folder name can have. ImageNet wnids look like n01440764.")
    return wnid


def _check_out(out_dir):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out_dir} exists and is not a directory.")
    parent = os.path.dirname(out_dir)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise UsageError(f"--out {out_dir} lies under {parent}, which is a file; pass a folder such as "
                         f"/data/imagenet/val.")


def _read(path, what, newline=None):
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as f:  # -sig: a byte-order mark is not text
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the {what} file {path}: {getattr(e, 'strerror', None) or e}.") from None


def read_synsets(path):
    lines = [line.split() for line in _read(path, "synsets").split("\n")]
    synsets = [_valid_wnid(tokens[0], f"{path}") for tokens in lines if tokens]
    if not synsets:
        raise UsageError(f"the synsets file {path} is empty; it should hold one wnid per line.")
    duplicates = [wnid for wnid, n in collections.Counter(synsets).items() if n > 1]
    if duplicates:
        raise UsageError(f"the synsets file {path} lists these wnids more than once: {_listing(duplicates)}.")
    return synsets


def read_labels(path, synsets_path=None):
    """``{image id (file name without extension): wnid}``; the format is recognised from the first line."""
    text = _read(path, "labels", newline="")
    first = text.lstrip().split("\n", 1)[0].strip()
    if first.lower().startswith("imageid"):
        try:
            return _read_csv_labels(path, text)
        except csv.Error as e:  # e.g. a field over csv's size limit
            raise UsageError(f"cannot read the labels file {path}: {e}. Give LOC_val_solution.csv as "
                             f"downloaded.") from None
    if first.isdigit():
        if synsets_path is None:
            raise UsageError(f"{path} is a list of class indices, which needs --synsets FILE (one wnid per line, "
                             f"in the devkit's ILSVRC2012_ID order). Or use LOC_val_solution.csv.")
        return _read_index_labels(path, text, read_synsets(synsets_path), synsets_path)
    raise UsageError(f"cannot recognise the labels file {path}: its first line is {first[:80]!r}. Give "
                     f"LOC_val_solution.csv (header 'ImageId,PredictionString') or the devkit's "
                     f"ILSVRC2012_validation_ground_truth.txt.")


def _read_csv_labels(path, text):
    labels = {}
    reader = csv.reader(text.splitlines())
    header = next(reader)
    if [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise UsageError(f"{path}: expected the header 'ImageId,PredictionString', found {','.join(header)!r}.")
    for line_number, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        tokens = row[1].split() if len(row) >= 2 else []
        if not tokens:
            raise UsageError(f"{path}, line {line_number}: no class in {','.join(row)!r}; each row should be "
                             "'ImageId,wnid ...'.")
        image_id, wnid = os.path.splitext(row[0].strip())[0], _valid_wnid(tokens[0], f"{path}, line {line_number}")
        if labels.setdefault(image_id, wnid) != wnid:
            raise UsageError(f"{path}: {image_id} is labelled both {labels[image_id]} and {wnid}.")
    return labels


def _read_index_labels(path, text, synsets, synsets_path):
    if len(synsets) == 1000 and synsets == sorted(synsets):
        raise UsageError(f"{synsets_path} lists 1000 wnids in sorted order, but the indices in {path} follow the "
                         f"devkit's meta.mat order (ID 1 is n02119789). Use LOC_val_solution.csv, or a synsets "
                         f"file in meta.mat's order.")
    labels = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            index = int(line)
        except ValueError:
            raise UsageError(f"{path}, line {line_number}: {line.strip()!r} is not a class index.") from None
        if not 1 <= index <= len(synsets):
            raise UsageError(f"{path}, line {line_number}: class index {index} is outside 1..{len(synsets)}, "
                             f"the classes listed in {synsets_path}.")
        labels[f"ILSVRC2012_val_{line_number:08d}"] = synsets[index - 1]
    return labels


def arrange_val(flat_dir, labels, out_dir):
    """Link ``out_dir/<wnid>/<id>.<ext>`` to ``flat_dir/<id>.<ext>`` (absolute) for every labelled image present."""
    if not os.path.isdir(flat_dir):
        raise UsageError(f"--flat {flat_dir} is not a directory. Give ILSVRC2012's flat validation folder "
                         "(ILSVRC2012_val_00000001.JPEG, ...).")
    files = {}  # image id -> file name
    for name in sorted(os.listdir(flat_dir)):
        path = os.path.join(flat_dir, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        image_id, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            if image_id in files:
                raise UsageError(f"{flat_dir} holds two files for image {image_id}: {files[image_id]} and {name}.")
            files[image_id] = name
    present = [i for i in labels if i in files]
    if labels and not present:
        raise UsageError(f"none of the {len(labels)} labelled images (such as {next(iter(labels))}) is among the "
                         f"{len(files)} image files of {flat_dir}. Check that --flat and --labels belong together.")

    out_dir = os.path.abspath(out_dir)
    _check_out(out_dir)
    linked = kept = 0
    for image_id in present:
        wnid, name = labels[image_id], files[image_id]
        source = os.path.abspath(os.path.join(flat_dir, name))
        target = os.path.join(out_dir, wnid, name)
        if os.path.islink(target) or os.path.exists(target):
            if os.path.realpath(target) != os.path.realpath(source):
                raise UsageError(f"{target} already exists and is not a link to {source}; remove it or choose "
                                 "another --out.")
            kept += 1
            continue
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(source, target)
        except OSError as e:
            raise UsageError(f"cannot create {target}: {e.strerror or e}; check that you can write to --out.") from None
        linked += 1
    return {"linked": linked, "kept": kept, "missing": sorted(set(labels) - set(files)),
            "extra": sorted(files[i] for i in set(files) - set(labels)), "classes": len({labels[i] for i in present})}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m imnet.tools.prepare",
                                     description="Arrange ImageNet data into the class-folder layout imnet expects.")
    commands = parser.add_subparsers(dest="command", required=True)
    val = commands.add_parser("val", help="flat ILSVRC2012 validation folder -> val/<wnid>/ (symlinks)",
                              description="Link each image of the flat val folder into OUT/<wnid>/ (idempotent).")
    val.add_argument("--flat", required=True, metavar="DIR", help="the flat folder (ILSVRC2012_val_00000001.JPEG ...)")
    val.add_argument("--labels", required=True, metavar="FILE",
                     help="LOC_val_solution.csv (ImageId,PredictionString) or the devkit's "
                          "ILSVRC2012_validation_ground_truth.txt (one 1-based index per line; needs --synsets)")
    val.add_argument("--synsets", metavar="FILE", help="wnids in the devkit's ILSVRC2012_ID order, one per line")
    val.add_argument("--out", required=True, metavar="DIR", help="the val folder to fill, e.g. /data/imagenet/val")
    return parser


def main(argv=None):
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
