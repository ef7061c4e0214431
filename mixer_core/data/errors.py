"""The one error every data problem raises."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, folder or URL that is wrong."""
