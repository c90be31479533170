"""MONAI datasets that skip, count and report unreadable images instead of stopping an epoch.

An item is *unreadable* when its transforms raise :class:`dissect_monai.data.ImageLoadError` (missing,
truncated or corrupt file, no pixel data, unsupported photometric interpretation, constant image, NaN/Inf).
By default (``on_error="skip"``) such an item is reported once with a warning naming the file and the problem,
recorded in ``bad_items`` and replaced by the next readable item; ``on_error="raise"`` fails fast with the
:class:`ImageLoadError` itself. Any other exception is a bug and propagates unchanged.

``skipped_count`` counts every unreadable item met so far, also by DataLoader worker processes (a shared-memory
flag per item). ``RobustCacheDataset`` decodes every cached item up front, so its ``bad_items`` is complete after
construction and unreadable items are removed from it (``len`` counts readable items only). For ``RobustDataset``
and ``RobustPersistentDataset`` items are met lazily: each worker process warns about the items it meets, and
``bad_items`` (the messages) lists what this process met itself.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset

from dissect_monai.data.errors import ImageLoadError

__all__ = ["ON_ERROR", "find_image_load_error", "RobustDataset", "RobustCacheDataset", "RobustPersistentDataset"]

ON_ERROR = ("skip", "raise")


def find_image_load_error(error: BaseException) -> ImageLoadError | None:
    """The :class:`ImageLoadError` behind ``error`` (MONAI wraps transform errors in ``RuntimeError``), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ImageLoadError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class _SkipUnreadable:
    """Mixin over a MONAI dataset's ``_transform(index)``: skip (or raise) items whose loading fails."""

    on_error: str
    bad_items: dict[int, str]

    def _init_robust(self, on_error: str) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.bad_items = {}
        self._dropped = 0
        self._met = torch.zeros(0, dtype=torch.bool)

    def _share_flags(self) -> None:
        """One shared-memory flag per item (call once ``self.data`` is final, before workers start)."""
        self._met = torch.zeros(len(self.data), dtype=torch.bool).share_memory_()

    @property
    def skipped_count(self) -> int:
        """Unreadable items met so far, in this process and in DataLoader workers (plus those dropped up front)."""
        return self._dropped + int(self._met.sum())

    def _report(self, index: int, error: ImageLoadError) -> None:
        if index < len(self._met):
            self._met[index] = True
        if index not in self.bad_items:
            self.bad_items[index] = str(error)
            warnings.warn(f"{type(self).__name__}: skipping unreadable item {index} ({self.skipped_count} skipped "
                          f"so far): {error}", stacklevel=4)

    def _transform(self, index: int):
        n = len(self)
        for attempt in range(n):
            current = (index + attempt) % n
            try:
                return super()._transform(current)
            except Exception as e:
                error = find_image_load_error(e)
                if error is None:
                    raise
                if self.on_error == "raise":
                    raise error from e
                self._report(current, error)
        raise ImageLoadError(f"{type(self).__name__} of {n} items", "every item is unreadable")

    def skipped_summary(self) -> str:
        """One line per skipped item: ``index: file: problem``."""
        return "\n".join(f"{i}: {msg}" for i, msg in sorted(self.bad_items.items()))


class RobustDataset(_SkipUnreadable, Dataset):
    """:class:`monai.data.Dataset` that skips and counts unreadable items (see the module docstring).

    Args:
        data: the datalist.
        transform: transforms applied on every access.
        on_error: ``"skip"`` (warn, count, use the next readable item) or ``"raise"`` (fail fast).
    """

    def __init__(self, data: Sequence, transform: Callable | None = None, on_error: str = "skip") -> None:
        self._init_robust(on_error)
        super().__init__(data=data, transform=transform)
        self._share_flags()


class RobustPersistentDataset(_SkipUnreadable, PersistentDataset):
    """:class:`monai.data.PersistentDataset` (deterministic transforms cached on disk) that skips and counts
    unreadable items; unreadable items are never cached and are reported once per process.

    Args:
        data: the datalist.
        transform: transforms; those before the first random one are cached in ``cache_dir``.
        cache_dir: cache folder (``None`` disables the disk cache).
        on_error: ``"skip"`` or ``"raise"``.
        kwargs: passed to :class:`monai.data.PersistentDataset`.
    """

    def __init__(self, data: Sequence, transform: Callable, cache_dir=None, on_error: str = "skip", **kwargs) -> None:
        self._init_robust(on_error)
        super().__init__(data=data, transform=transform, cache_dir=cache_dir, **kwargs)
        self._share_flags()


class RobustCacheDataset(_SkipUnreadable, CacheDataset):
    """:class:`monai.data.CacheDataset` (deterministic transforms cached in memory) that drops unreadable items.

    Every cached item is decoded at construction; those that fail are removed, listed in ``bad_items`` (by their
    index in the input ``data``) and summarised in one warning (or the first raises, with ``on_error="raise"``).
    Items beyond ``cache_rate`` are handled lazily like :class:`RobustDataset`.

    Args:
        data: the datalist.
        transform: a ``Compose``; transforms before the first random one are cached.
        on_error: ``"skip"`` or ``"raise"``.
        kwargs: passed to :class:`monai.data.CacheDataset` (``cache_rate``, ``num_workers``, ``progress``, ...;
            ``runtime_cache`` and ``hash_as_key`` are not supported).
    """

    def __init__(self, data: Sequence, transform: Callable, on_error: str = "skip", **kwargs) -> None:
        if kwargs.get("runtime_cache") or kwargs.get("hash_as_key"):
            raise ValueError("RobustCacheDataset fills its cache up front, one entry per item: runtime_cache and "
                             "hash_as_key are not supported")
        self._init_robust(on_error)
        kwargs.setdefault("progress", False)
        super().__init__(data=data, transform=transform, **kwargs)

    def set_data(self, data: Sequence) -> None:
        """Cache ``data`` (MONAI's ``set_data``, also run by ``__init__``) and drop its unreadable items."""
        self._load_errors: dict[int, ImageLoadError] = {}
        self.bad_items = {}
        super().set_data(data)
        self._drop_unreadable()
        self._dropped = len(self._load_errors)
        self._share_flags()

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as e:
            error = find_image_load_error(e)
            if error is None:
                raise
            self._load_errors[idx] = error
            return None

    def _drop_unreadable(self) -> None:
        if not self._load_errors:
            return
        first = min(self._load_errors)
        if self.on_error == "raise":
            raise self._load_errors[first]
        bad = set(self._load_errors)
        self.bad_items = {i: str(e) for i, e in sorted(self._load_errors.items())}
        keep = [i for i in range(len(self.data)) if i not in bad]
        cached = [self._cache[i] for i in range(len(self._cache)) if i not in bad]
        self.data = [self.data[i] for i in keep]
        self._cache = cached
        self.cache_num = len(cached)
        shown = "; ".join(self.bad_items[i] for i in sorted(bad)[:5])
        more = f" (and {len(bad) - 5} more, see .bad_items)" if len(bad) > 5 else ""
        warnings.warn(f"RobustCacheDataset: skipped {len(bad)} unreadable of {len(keep) + len(bad)} items: "
                      f"{shown}{more}", stacklevel=3)
