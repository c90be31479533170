"""The one error type raised for unreadable or unusable input images."""

from __future__ import annotations

from os import PathLike

__all__ = ["ImageLoadError"]


class ImageLoadError(ValueError):
    """An image that cannot be turned into a usable tensor.

    The message always names the file (or series directory) and the problem, e.g.
    ``"/data/x.dcm: no pixel data (PixelData element missing)"``. Datasets in :mod:`dissect_monai.data`
    catch this error to skip and count bad items.

    Args:
        filename: the file or directory that failed.
        problem: what is wrong with it, in words a user can act on. ``None``: ``filename`` is a complete message
            (how PyTorch re-raises a DataLoader worker's error in the main process, keeping this type).
    """

    def __init__(self, filename: str | PathLike | list | tuple, problem: str | None = None) -> None:
        if problem is None:
            self.filename, self.problem = "", str(filename)
            self._args: tuple = (str(filename),)
            super().__init__(str(filename))
            return
        if isinstance(filename, (list, tuple)):
            shown = f"{filename[0]} (+{len(filename) - 1} more files)" if len(filename) > 1 else str(filename[0])
        else:
            shown = str(filename)
        self.filename = shown
        self.problem = problem
        self._args = (shown, problem)
        super().__init__(f"{shown}: {problem}")

    def __reduce__(self):
        # rebuild with the constructor's arguments across process boundaries (DataLoader workers)
        return (type(self), self._args)
