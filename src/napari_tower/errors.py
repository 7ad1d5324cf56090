"""User-facing errors.

Everything a user can cause (bad files, wrong shapes, wrong checkpoint) raises
`TowerError` with a message that names the problem and the fix. The CLI turns
it into `error: ...` and exit status 2; the widget shows it as a notification.
"""


class TowerError(Exception):
    """A problem with the user's input or environment, with a message meant for them."""


class CheckpointError(TowerError):
    """A checkpoint that is missing, damaged, of the wrong kind, or unsafe."""


class StopRequested(Exception):
    """Internal: raised inside a training loop when the stop flag is set."""
