"""Failed calls become CommvqError, carrying the status and the library's message."""

from . import _api


class CommvqError(Exception):
    """A libcommvq call failed.

    status: the commvq_status_t code (compare with commvq.ERR_*),
    status_name: e.g. "COMMVQ_ERR_CAPACITY", message: commvq_last_error().
    """

    def __init__(self, status: int, status_name: str, message: str) -> None:
        super().__init__(f"{status_name}: {message}")
        self.status = status
        self.status_name = status_name
        self.message = message


def check(status: int) -> None:
    """Raises CommvqError for a nonzero status.

    Must run right after the failed call, on the same thread: the message is
    thread-local and replaced by the thread's next call into the library.
    """
    if status != _api.OK:
        lib = _api.library()
        message = lib.commvq_last_error().decode(errors="replace")  # first: the next call may replace it
        raise CommvqError(status, lib.commvq_status_string(status).decode(), message)


class TensorError(CommvqError, ValueError):
    """A tensor handed to a cache call is on the wrong device, of the wrong
    dtype or shape, or not contiguous; raised before the library is called.

    A CommvqError (status ERR_INVALID_ARGUMENT or ERR_SHAPE_MISMATCH) and a
    ValueError, like the binding's other argument checks.
    """

    _NAMES = {_api.ERR_INVALID_ARGUMENT: "COMMVQ_ERR_INVALID_ARGUMENT",
              _api.ERR_SHAPE_MISMATCH: "COMMVQ_ERR_SHAPE_MISMATCH"}

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, self._NAMES[status], message)
