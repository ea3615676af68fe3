"""The one error type users see.

Every check on user input raises `UserError` with a single line that says what is wrong and how
to fix it; the CLI prints it as `error: ...` and exits with status 2. Anything else escaping is a
bug in the toolkit and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or environment: a one-line message naming the problem and the fix."""
