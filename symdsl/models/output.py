"""Output folders that never destroy an input and never look complete before they are.

:func:`check_output` runs before any computation: the folder may not be (or be inside, or
contain) an input, must be creatable, and an existing non-empty folder is refused unless
``overwrite``. :func:`staged_output` then writes everything into a hidden temporary folder
beside the target and moves it into place at the end.

What makes a folder load as a model is its record: ``config.json`` (transformers) or
``symdsl_model.json`` (symdsl). While staging, that record is kept under a ``.partial`` name
(:func:`hide_records`), so the staging folder never loads; the commit renames the staging
folder onto the target and then the record back, as the very last step. A run killed at any
moment leaves either nothing, a hidden ``.NAME.symdsl-partial-*`` folder, or a target without
its record: none loads with ``from_pretrained`` or :func:`symdsl.load_model`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import UsageError

RECORD_FILES = ("config.json", "symdsl_model.json")   # the files that make a folder load as a model
PARTIAL = ".partial"                                   # suffix of a record that is not committed yet
STAGING = ".symdsl-partial-"                           # infix of a staging folder's name


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(folder: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                 flag: str = "overwrite=True") -> Path:
    """Validate an output folder before any work; return it resolved.

    Refused: an input itself, a folder inside an input or holding one, a path that is a file,
    an unwritable place, and an existing non-empty folder unless ``overwrite``. ``inputs`` are
    paths (model folders, checkpoint files); anything that is not an existing path is skipped.
    ``flag`` is how the error names the opt-in (``--overwrite`` on the command line).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "a").mkdir()
    >>> check_output(root / "out", inputs=[root / "a"]).name
    'out'
    >>> check_output(root, inputs=[root / "a"])
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: output folder '...' contains the input '...'; write the result somewhere else
    """
    target = Path(os.path.abspath(os.path.expanduser(str(folder))))
    real = Path(os.path.realpath(target))
    for item in inputs:
        source = Path(os.path.expanduser(str(item)))
        if not source.exists():
            continue        # a name (timm:..., module:factory, a spec name), not a path
        source = Path(os.path.realpath(source))
        if _inside(real, source):
            what = "is" if real == source else "is inside"
            raise UsageError(f"output folder '{folder}' {what} the input '{item}'; it would be overwritten: "
                             "write the result somewhere else")
        if _inside(source, real):
            raise UsageError(f"output folder '{folder}' contains the input '{item}'; write the result somewhere else")
    if target.exists() and not target.is_dir():
        raise UsageError(f"output '{folder}' is a file, not a folder; give a folder path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UsageError(f"output folder '{folder}' exists and is not empty; choose a new folder or pass {flag} "
                         "to replace it")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot create output folder '{folder}': '{parent}' is a file")
    try:   # a real probe: os.access says yes to root on a read-only mount
        probe = tempfile.mkdtemp(prefix=".symdsl-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise UsageError(f"cannot write output folder '{folder}': {exc.strerror} in '{parent}'; choose a writable "
                         "place") from None
    return target


def check_output_file(file: str | Path, *, inputs: Iterable[str | Path] = (), option: str = "the output") -> Path:
    """Validate a report file (``--json``, ``--plot``, a draft spec) before any work; return it.

    Refused: an existing file that is, or lies inside, an input (a model's weights, the spec
    being read), a folder, and a place that cannot be written. An earlier report is replaced.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "a").mkdir(); _ = (root / "a" / "w").write_text("x")
    >>> check_output_file(root / "a" / "w", inputs=[root / "a"], option="--json")
    Traceback (most recent call last):
    ...
    symdsl.errors.UsageError: --json '...' would overwrite a file of the input '...'; write it somewhere else
    """
    target = Path(os.path.abspath(os.path.expanduser(str(file))))
    if target.is_dir():
        raise UsageError(f"{option} '{file}' is a folder; give a file name")
    if target.exists():
        real = Path(os.path.realpath(target))
        for item in inputs:
            source = Path(os.path.expanduser(str(item)))
            if source.exists() and _inside(real, Path(os.path.realpath(source))):
                raise UsageError(f"{option} '{file}' would overwrite a file of the input '{item}'; write it "
                                 "somewhere else")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{option} '{file}' cannot be written: '{parent}' is not a writable folder")
    return target


def hide_records(folder: Path) -> None:
    """Rename the files that make ``folder`` load as a model to ``NAME.partial`` (see the module docstring)."""
    for name in RECORD_FILES:
        if (folder / name).exists():
            os.replace(folder / name, folder / (name + PARTIAL))


def is_partial(folder: Path) -> bool:
    """Does ``folder`` hold the uncommitted output of an interrupted symdsl run?

    >>> import tempfile, pathlib
    >>> is_partial(pathlib.Path(tempfile.mkdtemp()))
    False
    """
    return any((folder / (name + PARTIAL)).exists() for name in RECORD_FILES) or STAGING in folder.name


@contextlib.contextmanager
def staged_output(folder: str | Path, *, overwrite: bool = False,
                  inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``folder``; on success move it into place, else remove it.

    The caller writes the model (then :func:`hide_records`), any other files (model card,
    tokenizer ...), and ``symdsl.json`` last. An existing ``folder`` is replaced only with
    ``overwrite``, and never when it is, holds or lies in one of ``inputs`` (checked again here:
    a Hub id's snapshot folder is only known once the model is loaded).

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> with staged_output(out) as stage:
    ...     _ = (stage / "config.json").write_text("{}")
    ...     hide_records(stage)
    >>> sorted(p.name for p in out.iterdir())
    ['config.json']
    """
    target = check_output(folder, inputs=inputs, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING}", dir=target.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if target.exists():
        if any(target.iterdir()) and not overwrite:      # appeared while we worked
            shutil.rmtree(stage, ignore_errors=True)
            raise UsageError(f"output folder '{folder}' appeared while symdsl was working; nothing was written")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.symdsl-old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(stage, target)
    for name in RECORD_FILES:      # the commit: only now does the folder load as a model
        if (target / (name + PARTIAL)).exists():
            os.replace(target / (name + PARTIAL), target / name)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
