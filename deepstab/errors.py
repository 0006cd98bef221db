"""The one exception type that deepstab raises for problems a user can fix."""


class DeepstabError(Exception):
    """A problem with the user's input, data or files.

    The message is one paragraph that says what was wrong and how to fix it.
    The command line prints it without a traceback and exits with status 2.
    """
