"""The one error type the data package raises for bad input.

Every problem a user can fix (a missing or empty file, bytes that are not UTF-8, a field that is
not there, a label outside the declared set, a dataset name TFDS does not know) is reported as a
`DataError` with a single-line message that names the file and line, or the field.
"""

from models.errors import UserError


class DataError(UserError):
    """Bad input data or data configuration; the message is one line naming the culprit."""
