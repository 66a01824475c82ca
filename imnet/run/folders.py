"""Folder layout: which classes and which image files a data folder holds, and what to say when it is wrong.

The expected layout is torchvision's ImageFolder one, ``ROOT/<class name>/.../<image file>``, and for training
a data root ``ROOT/{train,val}/<class>/...``. This module only looks at names and directory listings; it never
opens an image (imnet.run.data reads them). Every problem it finds is raised as a DataError whose message is one
paragraph saying what is wrong and how to fix it; train.py and eval.py print it and exit with code 2.

The walker (walk_images, list_images) differs from os.walk / torchvision in three ways, each because a real
data copy did it:

* hidden entries (``.DS_Store``, ``.ipynb_checkpoints/``, anything starting with ``.``) are never listed;
* only regular files are listed, or symbolic links to regular files: a FIFO, socket or device named
  ``x.jpg`` would block or fail the first reader that opens it (a FIFO blocks a DataLoader worker forever),
  and a broken link can never be read, so these are skipped and reported;
* symbolic links to folders are followed (``imnet.tools.prepare`` and hand-made ImageNet trees use them), except a
  link back to a folder that encloses it (``c0/loop -> .``, ``c0/up -> ..``): os.walk would follow such a loop
  until the path grows too long, listing the class up to 40 times. Folders are identified by (st_dev, st_ino),
  so a loop through a bind mount is caught too. Such links are skipped and reported.

Everything skipped is appended to an optional ``skipped`` list as (path, reason), for the caller to report
(describe_skipped). The order of list_images is torchvision's ImageFolder order minus the skipped entries, so
sample indices agree with torchvision's on ordinary trees.

Only the standard library is imported, so the command-line tools can use this module without torch.
"""

from __future__ import annotations

import os
import stat
from operator import itemgetter
from typing import Iterator

from imnet.run.errors import UsageError

# The extensions torchvision's ImageFolder accepts; matched case-insensitively (ImageNet uses ".JPEG").
# The one list of image extensions of the project: import it, do not copy it.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_LAYOUT = "ROOT/<class name>/<image file>, e.g. ROOT/n01440764/n01440764_10026.JPEG"


class DataError(UsageError):
    """A problem with the data or the data flags. The message is one paragraph: what is wrong and how to fix
    it; train.py and eval.py print it and exit with code 2, without a traceback."""


# --------------------------------------------------------------------------------------------------------
# Names and messages


def is_image_name(name: str) -> bool:
    """True for a visible file name with one of IMG_EXTENSIONS (any case)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def display_path(path) -> str:
    """`path` as printable text. A file name that is not valid UTF-8 reaches Python as a str with lone
    surrogates (os.fsdecode's surrogateescape), which print() and json refuse; here each such byte is shown
    as an escape instead, e.g. ``caf\\xe9.jpg`` for the Latin-1 name b"caf\\xe9.jpg". Valid names are unchanged.
    Use it for messages only: to open the file, keep the original str."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        return path.decode("utf-8", "backslashreplace")
    try:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that surrogateescape did not make
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def short_list(items, limit: int = 8) -> str:
    """'a', 'b', 'c' and 12 more: a list for a message that may be about thousands of names."""
    items = list(items)
    shown = ", ".join(repr(display_path(x)) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _flat_folder_error(folder: str, count: int) -> DataError:
    """The one message for a folder of images without class folders (find_classes and resolve_val_dir)."""
    return DataError(
        f"{display_path(folder)!r} holds {count} image files but no class subfolders; images must be sorted "
        f"into one folder per class ({_LAYOUT}), the class being the folder name: with no class folders their "
        f"labels are unknown. A freshly extracted ImageNet validation set is flat like this: arrange it with "
        f"`python -m imnet.tools.prepare val --flat {display_path(folder)} --labels LOC_val_solution.csv --out "
        f"ROOT/val` (symlinks into one folder per class; the devkit's ground-truth list works too, with "
        f"--synsets), then pass ROOT, the folder holding val/.")


def describe_skipped(skipped, limit: int = 5) -> str:
    """One line for a log about the entries a walk skipped (walk_images' `skipped`); '' if there are none."""
    if not skipped:
        return ""
    shown = "; ".join(f"{display_path(path)} ({reason})" for path, reason in list(skipped)[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return (f"{len(skipped)} entries with image names were skipped (not regular files, or folder links "
            f"that loop): {shown}{more}. Replace them by the image files, or remove them.")


# --------------------------------------------------------------------------------------------------------
# The walker


def _folder_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _enclosing_ids(folder: str) -> frozenset:
    """(st_dev, st_ino) of `folder` and of every folder above it up to '/', both along its path as written
    and along its real path (links resolved): a link inside it to any of them would make a loop."""
    ids = set()
    for path in {os.path.abspath(folder), os.path.realpath(folder)}:
        while True:
            try:
                ids.add(_folder_id(os.stat(path)))
            except OSError:
                pass
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return frozenset(ids)


def _not_regular(entry: os.DirEntry) -> str:
    """Why an entry with an image name is not listed (it is not a regular file, nor a link to one)."""
    try:
        mode = entry.stat(follow_symlinks=True).st_mode
    except FileNotFoundError:
        return "broken symbolic link" if entry.is_symlink() else "vanished while listed"
    except OSError as exc:
        return f"cannot stat it ({exc.strerror or exc})"
    kinds = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    kind = next((text for test, text in kinds if test(mode)), "not a regular file")
    return ("symbolic link to " + kind) if entry.is_symlink() else kind


def walk_images(folder, skipped: list | None = None) -> Iterator[tuple[str, list[str]]]:
    """Yield (reldir, names) for every folder under `folder`, itself included: `reldir` is the folder's path
    relative to `folder` ('' for `folder` itself, os.sep-separated), `names` its image files (unsorted).

    Folders come in no particular order (list_images sorts). Listing costs one os.scandir per folder, one
    stat per folder (its identity, for loops) and one stat per symbolic link (what it points to); a regular
    file costs nothing beyond its directory entry (on a file system that does not report entry types in
    its listings, scandir itself needs a stat per entry). Skipped entries (see the module docstring) and folders
    that cannot be listed are appended to `skipped` as (path, reason). A `folder` that cannot be listed
    yields nothing."""
    top = os.fspath(folder)
    if isinstance(top, bytes):
        top = os.fsdecode(top)
    note = skipped.append if skipped is not None else (lambda item: None)
    stack = [("", top, _enclosing_ids(top))]
    while stack:
        reldir, path, enclosing = stack.pop()
        try:
            with os.scandir(path) as listing:
                entries = list(listing)
        except OSError as exc:
            note((path, f"cannot list the folder ({exc.strerror or exc})"))
            continue
        names = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows links: a stat for a link, free for anything else
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    ident = _folder_id(entry.stat())
                except OSError as exc:
                    note((entry.path, f"cannot stat the folder ({exc.strerror or exc})"))
                    continue
                if ident in enclosing:
                    what = "symbolic link" if entry.is_symlink() else "folder (a bind mount?)"
                    note((entry.path, f"{what} to a folder that encloses it, a loop: not followed"))
                    continue
                stack.append((os.path.join(reldir, name), entry.path, enclosing | {ident}))
            elif is_image_name(name):
                try:
                    regular = entry.is_file()  # follows links; DT_REG needs no stat
                except OSError:
                    regular = False
                if regular:
                    names.append(name)
                else:
                    note((entry.path, _not_regular(entry)))
        yield reldir, names


def order_listing(listing) -> list[str]:
    """(reldir, names) pairs, as walk_images yields them, -> the relative paths of the files in torchvision's
    ImageFolder order: folders sorted by path (as strings, so 'a-b' < 'a/b', since '-' < '/'), then the files
    of each folder sorted by name."""
    paths: list[str] = []
    for reldir, names in sorted(listing, key=itemgetter(0)):
        prefix = reldir + os.sep if reldir else ""
        paths += [prefix + name for name in sorted(names)]
    return paths


def list_images(folder, skipped: list | None = None) -> list[str]:
    """The image files under `folder`, as paths relative to it, in torchvision's ImageFolder order (minus
    hidden and skipped entries; see walk_images)."""
    return order_listing(walk_images(folder, skipped))


def has_image(folder) -> bool:
    """True as soon as one image file is found under `folder`. The usual case, an image directly inside,
    stops at the first one without reading the rest of the folder's listing; otherwise the walk goes on
    until a folder with an image is listed."""
    try:
        with os.scandir(folder) as listing:
            if any(is_image_name(e.name) and e.is_file() for e in listing):
                return True
    except OSError:
        pass  # the walk below meets the same error and finds nothing there
    return any(names for _, names in walk_images(folder))


# --------------------------------------------------------------------------------------------------------
# Layout checks


def _visible_entries(folder: str) -> list:
    """The os.scandir entries of ``folder`` that are not hidden; DataError if it cannot be listed."""
    try:
        return [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except OSError as exc:
        raise DataError(f"Cannot list {display_path(folder)!r} ({exc}). Check the path and its "
                        f"permissions.") from exc


def find_classes(root) -> list[str]:
    """The sorted class-folder names under `root` (one subfolder per class, any depth of images below).

    Hidden entries are ignored. Raises DataError if `root` is missing or not a folder, has no class folders
    (with a specific message for a flat folder of images, the usual state of a freshly extracted ImageNet
    val set), or has class folders without a single image file (listed by name)."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DataError(f"The folder {display_path(root)!r} does not exist. Check the path (and --data); the "
                        f"expected layout is {_LAYOUT}.")
    if not os.path.isdir(root):
        raise DataError(f"{display_path(root)!r} is a file, not a folder. Pass the folder that holds one "
                        f"subfolder per class: {_LAYOUT}.")
    entries = _visible_entries(root)
    classes = sorted(e.name for e in entries if e.is_dir())
    if not classes:
        loose = [e.name for e in entries if is_image_name(e.name) and e.is_file()]
        if loose:
            raise _flat_folder_error(root, len(loose))
        raise DataError(f"{display_path(root)!r} has no class subfolders (it is empty or holds only hidden or "
                        f"non-image files). The expected layout is {_LAYOUT}.")
    empty = [c for c in classes if not has_image(os.path.join(root, c))]
    if empty:
        raise DataError(
            f"{len(empty)} of the {len(classes)} class folders in {display_path(root)!r} contain no image "
            f"file: {short_list(empty)}. Accepted extensions are {', '.join(IMG_EXTENSIONS)} (any case), in regular "
            f"files or links to them. Put the images back, or delete these folders from both train/ and val/ "
            f"if the classes are not wanted.")
    return classes


def check_data_root(data_root) -> tuple[str, str, list[str]]:
    """Validate a dataset root `data_root/{train,val}/<class>/<image>` before any work is done.

    Returns (train_dir, val_dir, classes). Raises DataError with a fix when the root or one of the splits is
    missing, a split has no or empty class folders, or val/ and train/ do not have the same class folders
    (both differences listed): a label index is a position in the sorted class list, so the two splits
    must agree exactly or val accuracy would silently compare the wrong classes."""
    root = os.fspath(data_root)
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise DataError(f"The data root {display_path(root)!r} {what}. Pass --data the folder that holds train/ "
                        f"and val/, each laid out as {_LAYOUT.replace('ROOT', 'train')}.")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    missing = [name + "/" for name, d in (("train", train_dir), ("val", val_dir)) if not os.path.isdir(d)]
    if missing:
        found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        hint = (f" It contains the folders {short_list(found)}." if found else " It contains no folders.")
        if found and not any(n in ("train", "val") for n in found):
            hint += " If these are class folders, you passed a split itself: pass its parent folder instead."
        raise DataError(f"The data root {display_path(root)!r} has no {' and no '.join(missing)} folder.{hint} "
                        f"--data must point at a folder with train/ and val/ inside, each laid out as "
                        f"{_LAYOUT.replace('ROOT', 'train')} (rename e.g. 'validation' to 'val').")
    classes = find_classes(train_dir)
    val_classes = find_classes(val_dir)
    if classes != val_classes:
        only_val = sorted(set(val_classes) - set(classes))
        only_train = sorted(set(classes) - set(val_classes))
        raise DataError(
            f"train/ and val/ in {display_path(root)!r} do not have the same class folders ({len(classes)} in "
            f"train/, {len(val_classes)} in val/). Only in val/: {short_list(only_val) or 'none'}. Only in train/: "
            f"{short_list(only_train) or 'none'}. Labels are positions in the sorted class list, so both splits "
            f"must hold exactly the same class folder names: add or remove folders until they match.")
    return train_dir, val_dir, classes


def resolve_val_dir(path) -> str:
    """The folder to evaluate for eval.py's --data: ``path/val`` if it exists, else `path` itself.

    Raises DataError when `path` is not a folder, when it has a train/ folder but no val/ (a data root whose
    val split is missing: evaluating train/ by mistake would report training accuracy), and when the chosen
    folder holds image files but no folder at all (a flat ImageNet val folder; the same message as
    find_classes'). Whether the class folders are valid is find_classes' job."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
        raise DataError(f"--data {display_path(path)!r} {what}. Pass the data root that holds val/, or the val "
                        f"folder itself, laid out as {_LAYOUT}.")
    val_dir = os.path.join(path, "val")
    if not os.path.isdir(val_dir):
        val_dir = path
        if os.path.isdir(os.path.join(path, "train")):
            raise DataError(f"--data {display_path(path)!r} has a train/ folder but no val/ folder; pass the "
                            f"root that holds val/, or the val folder itself (laid out as {_LAYOUT}).")
    entries = _visible_entries(val_dir)
    if not any(e.is_dir() for e in entries):
        images = sum(1 for e in entries if is_image_name(e.name) and e.is_file())
        if images:
            raise _flat_folder_error(val_dir, images)
    return val_dir
