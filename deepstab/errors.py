"""The one exception type deepstab raises for problems a user can fix."""


class DeepstabError(Exception):
    """A problem with the user's input, data, settings or files.

    The message is one paragraph that says what was wrong and how to fix it.
    The command line prints it without a traceback and exits with status 2.
    Programming errors (a wrong call inside deepstab) raise ``ValueError`` or
    ``TypeError`` instead.
    """


class DeepstabNote(UserWarning):
    """Something the user should know about a run that still goes on (a collapse and the
    fallback taken, data rescaled). The command line prints it as one plain line; other
    libraries' warnings are shown only with ``--verbose``."""
