"""One writer per output directory: `<directory>/.cc_jax.lock`, naming its holder.

A training run, a matrix fit or an evaluation holds the lock of the directory it writes for as
long as it runs. A second process refuses to start and names the holder (host, pid, task,
start time). The lock is an `flock` on the file, which the kernel releases when its holder
dies however it dies, so a lock file left by a killed process on this host is recognised as
stale and taken over with a warning. A holder on another host cannot be checked from here:
the message says so and how to clear it. In a multi-process job, process 0 holds the lock for
all processes and tells them whether it got it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
from typing import Iterator

from absl import logging
import jax
import numpy as np

from cc_jax import errors

LOCK_FILE = ".cc_jax.lock"


class WorkdirLockedError(errors.RunStopped):
  """Another process writes to this directory."""


def _describe(holder: dict) -> str:
  return (f"{holder.get('task', '?')} process {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
          f"started {holder.get('started', '?')}")


def _read_holder(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode(errors="replace")
  try:
    return json.loads(text) if text.strip() else {}
  except json.JSONDecodeError:
    return {"host": "?", "pid": "?", "task": f"unreadable lock ({text[:40]!r})"}


def _acquire(path: pathlib.Path, task: str) -> int:
  """Takes the lock at `path` for this process; returns its file descriptor."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirLockedError(
          f"{path.parent} is in use by {_describe(holder)} ({path}); wait for it to finish, or write to "
          "another directory") from None
    try:  # the holder may have released and unlinked it between our open and flock: retry on the new file
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        break
    except FileNotFoundError:
      pass
    os.close(fd)
  holder, me = _read_holder(fd), socket.gethostname()
  if holder and holder.get("host") != me:
    # Its flock lives on that host; on storage that does not share locks it is invisible here.
    os.close(fd)
    raise WorkdirLockedError(
        f"{path.parent} is in use by {_describe(holder)} ({path}); this host cannot tell whether that "
        f"process still runs. If it does not, delete {path} and run again")
  if holder:
    logging.warning("%s: taking over a stale lock of %s, which is no longer running", path.parent,
                    _describe(holder))
  record = {"host": me, "pid": os.getpid(), "task": task,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(record).encode(), 0)
  os.fsync(fd)
  return fd


def _agree(ok: bool) -> bool:
  """Process 0's outcome, on every process (a no-op in a single-process run)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def hold(directory, task: str, create: bool = True) -> Iterator[None]:
  """Holds `<directory>/.cc_jax.lock` while the block runs.

  Args:
    create: create `directory` if missing (else a missing one is a FileNotFoundError).

  Raises:
    WorkdirLockedError: another live process holds it, or a process on another host did.
  """
  directory = pathlib.Path(directory)
  path = directory / LOCK_FILE
  if not create and not directory.is_dir():
    raise FileNotFoundError(f"{directory} does not exist")
  fd, error = None, None
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    try:
      fd = _acquire(path, task)
    except WorkdirLockedError as e:
      error = e
  if not _agree(error is None):
    raise error or WorkdirLockedError(f"{directory}: process 0 could not take {path}; see its log")
  try:
    yield
  finally:
    if fd is not None:
      path.unlink(missing_ok=True)  # before unlocking, so no one takes the lock of a removed file
      os.close(fd)
