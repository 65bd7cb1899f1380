"""Writing files so that a reader never sees half of one."""

import os
import pathlib
import tempfile


def _current_umask() -> int:
  # os.umask can only be read by setting it; set it straight back.
  umask = os.umask(0o022)
  os.umask(umask)
  return umask


def plain_file_mode() -> int:
  """The permissions `open(path, "w")` gives a new file: 0o666 less the umask."""
  return 0o666 & ~_current_umask()


def write_atomic(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it into place.

  The file gets the permissions `open(path, "w")` would give it (0o666 less the umask), not
  mkstemp's private 0o600, so that others sharing the output directory can read the results.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fchmod(f.fileno(), plain_file_mode())
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
