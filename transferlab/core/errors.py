"""The one exception a user sees.

Everything that is the user's to fix (a path, a key, a model name, a file) raises `TransferlabError` with
one line that names the thing and says what to do. The CLI prints that line and exits non-zero; anything
else that escapes is a bug in transferlab and keeps its traceback.
"""


class TransferlabError(Exception):
    """A problem with the user's input, stated in one line that names the thing and the fix."""
