"""The one exception type users see.

Every error a user can cause (bad source, bad bundle, bad option) is raised as
``EdgediffError`` with a message that names the file, field, layer or option at fault.
The CLI prints it as one line and exits non-zero; nothing else is caught there, so a
bug still shows its traceback.
"""


class EdgediffError(Exception):
    """A problem with the user's input, explained in one line."""
