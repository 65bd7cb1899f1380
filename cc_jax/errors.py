"""The one exception type the entry points print without a traceback."""


class RunStopped(RuntimeError):
  """Stops a run with a message that says everything a user needs (what, where, what to do):
  bad input, a failed save, a locked or mismatched workdir. `cc_jax.main` prints the message
  alone and exits 1; library callers catch it like any RuntimeError."""
