"""Folder layout (torchvision's ImageFolder one, ``ROOT/<class name>/.../<image file>``): which classes and image
files a folder holds, and the DataError when it is wrong. Standard library only (the tools use it without torch).
"""

from __future__ import annotations

import os
import stat
from operator import itemgetter
from typing import Iterator

from imnet.run.errors import UsageError

# torchvision's ImageFolder extensions, matched in any case: the project's one list.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_LAYOUT = "ROOT/<class name>/<image file>, e.g. ROOT/n01440764/n01440764_10026.JPEG"


class DataError(UsageError):
    """A problem with the data or the data flags: one paragraph, exit 2."""


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def display_path(path) -> str:
    """`path` as printable text, for messages only: a non-UTF-8 byte as an escape, e.g. ``caf\\xe9.jpg``."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        return path.decode("utf-8", "backslashreplace")
    try:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that surrogateescape did not make
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def short_list(items, limit: int = 8) -> str:
    """'a', 'b', 'c' and 12 more."""
    items = list(items)
    shown = ", ".join(repr(display_path(x)) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def describe_skipped(skipped, limit: int = 5) -> str:
    """One log line about the entries a walk skipped; '' if there are none."""
    if not skipped:
        return ""
    shown = "; ".join(f"{display_path(path)} ({reason})" for path, reason in list(skipped)[:limit])
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return (f"{len(skipped)} entries with image names were skipped (not regular files, or folder links "
            f"that loop): {shown}{more}. Replace them by the image files, or remove them.")


def _folder_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _enclosing_ids(folder: str) -> frozenset:
    """The ids of `folder` and of every folder above it, along its path as written and along its real path."""
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
    """Why an entry with an image name is not listed."""
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
    """Yield (reldir, unsorted image names) for every folder under `folder`, itself included (''), in no order:
    torchvision's files but hidden entries. To `skipped` as (path, reason): image names that are not regular files
    (a FIFO would block a worker), links to an enclosing folder (``c0/loop -> .``), folders that cannot be listed."""
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
    """walk_images' pairs -> relative paths in torchvision's order (folders by path as strings: 'a-b' < 'a/b')."""
    paths: list[str] = []
    for reldir, names in sorted(listing, key=itemgetter(0)):
        prefix = reldir + os.sep if reldir else ""
        paths += [prefix + name for name in sorted(names)]
    return paths


def list_images(folder, skipped: list | None = None) -> list[str]:
    """The image files under `folder`, relative to it, in torchvision's ImageFolder order."""
    return order_listing(walk_images(folder, skipped))


def has_image(folder) -> bool:
    """True as soon as one image file is found under `folder` (an image directly inside ends the listing)."""
    try:
        with os.scandir(folder) as listing:
            if any(is_image_name(e.name) and e.is_file() for e in listing):
                return True
    except PermissionError as exc:
        raise no_permission(folder, exc) from None
    except OSError:
        pass  # the walk below meets the same error and finds nothing there
    return any(names for _, names in walk_images(folder))


def user_name() -> str:
    """The user this process runs as, for permission messages: 'name (uid N)', or the uid alone."""
    try:
        import pwd  # POSIX only
        return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except (ImportError, KeyError, AttributeError):
        return f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "this user"


def no_permission(path, exc: OSError) -> DataError:
    return DataError(f"{display_path(path)!r} cannot be read by {user_name()}: {exc.strerror or exc}. Give that "
                     f"user read and search permission on it (e.g. chmod -R a+rX), or run as a user who has it.")


def _not_a_folder(path: str) -> str | None:
    if os.path.isdir(path):
        return None
    return "is a file, not a folder" if os.path.exists(path) else "does not exist"


def _visible_entries(folder: str) -> list:
    try:
        return [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except PermissionError as exc:
        raise no_permission(folder, exc) from None
    except OSError as exc:
        raise DataError(f"Cannot list {display_path(folder)!r} ({exc}). Check the path and its "
                        f"permissions.") from exc


def _class_folders(folder: str) -> list[str]:
    """The sorted visible subfolders of `folder`; DataError for a flat folder of images."""
    entries = _visible_entries(folder)
    classes = sorted(e.name for e in entries if e.is_dir())
    loose = sum(1 for e in entries if is_image_name(e.name) and e.is_file()) if not classes else 0
    if loose:
        raise DataError(
            f"{display_path(folder)!r} holds {loose} image files but no class subfolders, so their labels are "
            f"unknown: sort them into one folder per class ({_LAYOUT}). For a freshly extracted ImageNet val set, "
            f"run `python -m imnet.tools.prepare val --flat {display_path(folder)} --labels LOC_val_solution.csv "
            f"--out ROOT/val` (or --synsets with the devkit's list), then pass ROOT.")
    return classes


def find_classes(root) -> list[str]:
    """The sorted class-folder names under `root` (hidden entries ignored), each holding an image file."""
    root = os.fspath(root)
    if what := _not_a_folder(root):
        raise DataError(f"{display_path(root)!r} {what}. Check the path (and --data): it must hold one subfolder "
                        f"per class, {_LAYOUT}.")
    classes = _class_folders(root)
    if not classes:
        raise DataError(f"{display_path(root)!r} has no class subfolders (it is empty or holds only hidden or "
                        f"non-image files). The expected layout is {_LAYOUT}.")
    empty = [c for c in classes if not has_image(os.path.join(root, c))]
    if empty:
        raise DataError(
            f"{len(empty)} of the {len(classes)} class folders in {display_path(root)!r} contain no image "
            f"file: {short_list(empty)}. Put the images ({', '.join(IMG_EXTENSIONS)}, any case) back, or delete "
            f"these folders from both train/ and val/.")
    return classes


def check_data_root(data_root) -> tuple[str, str, list[str]]:
    """Check `data_root/{train,val}/<class>/<image>` before any work -> (train_dir, val_dir, classes)."""
    root = os.fspath(data_root)
    train_layout = _LAYOUT.replace("ROOT", "train")
    if what := _not_a_folder(root):
        raise DataError(f"The data root {display_path(root)!r} {what}. Pass --data the folder that holds train/ "
                        f"and val/, each laid out as {train_layout}.")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    missing = [name + "/" for name, d in (("train", train_dir), ("val", val_dir)) if not os.path.isdir(d)]
    if missing:
        found = sorted(e.name for e in _visible_entries(root) if e.is_dir())
        split = (" (if these are class folders, you passed a split itself: pass its parent folder)"
                 if found and not any(n in ("train", "val") for n in found) else "")
        raise DataError(f"The data root {display_path(root)!r} has no {' and no '.join(missing)} folder; it holds "
                        f"{short_list(found) or 'no folder'}{split}. Pass --data the folder with train/ and val/ "
                        f"inside (rename e.g. 'validation' to 'val'), each laid out as {train_layout}.")
    classes = find_classes(train_dir)
    if len(classes) < 2:  # one label for every image: a loss of 0 and 100% top-1 that mean nothing
        raise DataError(f"{display_path(train_dir)!r} holds one class folder, {classes[0]!r}, so every image has "
                        f"the same label. Sort the images into one folder per class: {train_layout}.")
    val_classes = find_classes(val_dir)
    if classes != val_classes:
        only_val = sorted(set(val_classes) - set(classes))
        only_train = sorted(set(classes) - set(val_classes))
        raise DataError(
            f"train/ and val/ in {display_path(root)!r} do not have the same class folders ({len(classes)} in "
            f"train/, {len(val_classes)} in val/; only in val/: {short_list(only_val) or 'none'}; only in train/: "
            f"{short_list(only_train) or 'none'}). Add or remove class folders until both splits hold the same "
            f"names.")
    return train_dir, val_dir, classes


def resolve_val_dir(path) -> str:
    """eval.py's --data: ``path/val`` if it exists, else `path` itself (not a root with train/ only)."""
    path = os.fspath(path)
    if what := _not_a_folder(path):
        raise DataError(f"--data {display_path(path)!r} {what}. Pass the data root that holds val/, or the val "
                        f"folder itself, laid out as {_LAYOUT}.")
    val_dir = os.path.join(path, "val")
    if not os.path.isdir(val_dir):
        val_dir = path
        if os.path.isdir(os.path.join(path, "train")):
            raise DataError(f"--data {display_path(path)!r} has a train/ folder but no val/ folder. Pass the root "
                            f"that holds val/, or the val folder itself (laid out as {_LAYOUT}).")
    _class_folders(val_dir)
    return val_dir
