"""Hand back the resident pages of tensors memory-mapped from a checkpoint, once they are read.

transformers loads safetensors shards by mapping them privately (copy on write): a tensor's
pages come into the resident set when it is first read and stay there, next to whatever
working form (a float64 upcast, a correlation) was made from them. A page nothing wrote to is
still the file's page: dropping it from the process (``madvise(MADV_DONTNEED)``) loses nothing,
and the next read maps it again from the page cache, or from disk if the kernel needed the
memory. A page that was written (canonicalization folds a gain in place: the kernel copied it)
holds the only copy of the new values, and dropping it would bring the file's old values back:
those pages are found in ``/proc/self/pagemap`` (bit 61: a file page) and left alone.

Linux only; elsewhere, on other devices, for tensors not in a private file mapping, or where
``/proc`` cannot be read, nothing is released (the pages then stay, as before).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
from typing import Iterable

import numpy as np
import torch

from .libc import libc_function

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_FILE_PAGE = 1 << 61          # pagemap: the page is a file page (or shared anonymous memory)
_SWAPPED = 1 << 62            # pagemap: the page is in swap (then it is anonymous: written)
# Tensors smaller than this are left as they are: their pages are few, and finding the process's
# file mappings (/proc/self/maps, about 3 ms with torch loaded) costs more than they hold.
MIN_RELEASE_BYTES = 1 << 20


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    return libc_function("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int))


_MADVISE = _madvise()


def _private_file_mappings() -> list[tuple[int, int]]:
    """``(start, end)`` of this process's private mappings of regular files (``/proc/self/maps``)."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            # address perms offset dev inode path; a path starting with '/' and a non-zero inode: a file
            if len(fields) == 6 and fields[1][3] == "p" and fields[4] != "0" and fields[5].startswith("/"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                found.append((start, end))
    return found


def _page_flags(pagemap: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(present, file page, swapped), each (count,) bool, of ``count`` pages from page number ``first``."""
    entries = np.frombuffer(os.pread(pagemap, 8 * count, 8 * first), dtype=np.uint64)   # (count,)
    return ((entries >> np.uint64(63)).astype(bool), (entries & np.uint64(_FILE_PAGE)).astype(bool),
            (entries & np.uint64(_SWAPPED)).astype(bool))


def _unwritten_runs(pagemap: int, first: int, count: int) -> tuple[list[tuple[int, int]], int]:
    """Runs ``(page, pages)`` among ``count`` pages from page number ``first`` that hold no written
    data (file pages, and pages not mapped at all: dropping those does nothing), and how many of
    them are resident file pages."""
    present, file_page, swapped = _page_flags(pagemap, first, count)
    clean = ~swapped & (~present | file_page)                                             # (count,)
    # run boundaries: where clean switches on (+1) and off (-1)
    edges = np.diff(np.concatenate(([0], clean.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    runs = [(first + int(a), int(b - a)) for a, b in zip(starts, stops)]
    return runs, int((present & file_page).sum())


def can_inspect() -> bool:
    """Can this process read its page map (Linux with /proc, and madvise found)?"""
    return _MADVISE is not None and os.access("/proc/self/pagemap", os.R_OK)


def anonymous_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor``'s whole pages that are resident and backed by no file (heap memory, or a
    mapped checkpoint's pages once written: the only copy of their values); 0 where ``/proc``
    cannot say. A tensor smaller than a page is judged by the pages it touches (which it shares
    with its neighbours); a larger one by its whole pages only, so a written neighbour does not
    make it look written.

    >>> anonymous_bytes(torch.ones(1 << 20)) >= (1 << 22) - 2 * 4096    # heap memory, all touched
    True
    """
    begin = tensor.data_ptr()
    end = begin + tensor.numel() * tensor.element_size()
    first, last = -(-begin // _PAGE), end // _PAGE                 # whole pages
    if last <= first:
        first, last = begin // _PAGE, -(-end // _PAGE)              # the pages it touches
    if tensor.device.type != "cpu" or last <= first or not can_inspect():
        return 0
    try:
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return 0
    try:
        present, file_page, swapped = _page_flags(pagemap, first, last - first)
    finally:
        os.close(pagemap)
    return int(((present & ~file_page) | swapped).sum()) * _PAGE


def discard_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Drop every whole page of ``tensors`` that lies in a private file mapping, written or not, and
    return the resident bytes dropped: for values nobody reads again (a tensor moved elsewhere).

    A written page's values are lost: the address reads the file's bytes again. Heap and other
    anonymous memory are never touched (dropping them would read zeros), nor pages shared with
    a neighbour.

    >>> discard_pages([torch.ones(1 << 20)])        # heap memory: left alone
    0
    """
    return _drop(tensors, written_too=True)


def release_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Drop from the resident set the pages of ``tensors`` that are mapped from a file and unwritten;
    returns the bytes dropped (resident file pages; 0 where nothing could be).

    Only pages that lie entirely inside one tensor are touched (a page shared with a neighbour
    the caller did not name is left as it is), and only tensors of at least ``MIN_RELEASE_BYTES``.
    The tensors keep their values: the next read maps the pages again.

    >>> release_pages([torch.ones(3)])      # not memory-mapped: nothing to hand back
    0
    """
    return _drop(tensors, written_too=False)


def _drop(tensors: Iterable[torch.Tensor], written_too: bool) -> int:
    """madvise(MADV_DONTNEED) the whole pages of ``tensors`` inside private file mappings: the unwritten
    ones only, or (``written_too``) all of them. Returns the resident bytes dropped."""
    if _MADVISE is None:
        return 0
    spans = []
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.numel() * tensor.element_size() < MIN_RELEASE_BYTES:
            continue
        begin = tensor.data_ptr()
        end = begin + tensor.numel() * tensor.element_size()
        first, last = -(-begin // _PAGE), end // _PAGE          # whole pages only
        if last > first:
            spans.append((first, last))
    if not spans:
        return 0
    try:
        mappings = _private_file_mappings()
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return 0
    released = 0
    try:
        for first, last in spans:
            if not any(start <= first * _PAGE and last * _PAGE <= end for start, end in mappings):
                continue            # heap or anonymous memory: the only copy, never dropped
            if written_too:
                runs, resident = [(first, last - first)], int(_page_flags(pagemap, first, last - first)[0].sum())
            else:
                runs, resident = _unwritten_runs(pagemap, first, last - first)
            for page, count in runs:
                _MADVISE(page * _PAGE, count * _PAGE, _MADV_DONTNEED)
            released += resident * _PAGE
    finally:
        os.close(pagemap)
    return released
