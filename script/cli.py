"""How every script ends: one ``error: ...`` line and a documented exit status instead of a traceback.

Every runnable script ends with::

    if __name__ == "__main__":
        from script.cli import run_main

        run_main(main)

Exit statuses:

    0    success: main() returned 0, None or a result record (a trainer's training_info)
    1    main() returned 1: the script's own failure status, explained in its output (bad records
         found, a result that cannot be trusted)
    2    bad setting or bad input: ConfigError, DataError ("path:line: reason"), UnknownModelError;
         argparse usage errors exit 2 as well
    74   the file system refused a read or write (EX_IOERR of sysexits.h): a full disk or quota
         (ENOSPC, EDQUOT), a read-only or forbidden path (EROFS, EACCES, EPERM), a missing or blocked
         path (ENOENT, ENOTDIR, EISDIR, EEXIST, ENAMETOOLONG), a device error (EIO). The line names
         the file. Outputs are written atomically (script/data_io.py), so the file named was not
         replaced and outputs finished earlier are intact; fix the cause and rerun.
    130  interrupted (Ctrl-C)

Any other exception is a bug and keeps its traceback. MEDGEMMA_KOREAN_TRACEBACK=1 shows the
traceback for the cases above as well.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from script.data_io import DataError
from script.launch import leave_process_group
from script.training_config import ConfigError, UnknownModelError

EXIT_BAD_INPUT = 2
EXIT_IO_ERROR = 74
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "MEDGEMMA_KOREAN_TRACEBACK"

_HINTS = [  # (errnos, what to do), also the list of errnos handled
    ({errno.ENOSPC, errno.EDQUOT}, "nothing was replaced; free some space and rerun — finished outputs are kept"),
    ({errno.EROFS, errno.EACCES, errno.EPERM},
     "nothing was replaced; fix the permissions or choose another path, then rerun"),
    ({errno.ENOENT, errno.ENAMETOOLONG}, "check the path; nothing was replaced"),
    ({errno.ENOTDIR, errno.EEXIST}, "a file stands where a folder is needed; check the path, nothing was replaced"),
    ({errno.EISDIR}, "a folder stands where a file is needed; check the path, nothing was replaced"),
    ({errno.EIO}, "the device reported an I/O error; nothing was replaced — check the disk"),
]
HANDLED_ERRNOS = frozenset().union(*(numbers for numbers, _ in _HINTS))

# Writers that do not raise OSError on a full disk (what a Trainer checkpoint save meets): Rust
# libraries (safetensors, tokenizers) end their message with "(os error N)", torch.save raises a
# RuntimeError of its stream writer. The file they were writing is read from their frame in the
# traceback: (file suffix, function, local variable).
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "iostream error", "unexpected pos")
_WRITER_FRAMES = (("torch/serialization.py", "save", "f"), ("safetensors/torch.py", "save_file", "filename"),
                  ("transformers/tokenization_utils_tokenizers.py", "_save_pretrained", "tokenizer_file"))
_NEARLY_FULL_BYTES = 1 << 20


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


_installed_handlers: list[logging.Handler] = []


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Every script's logging: timestamped lines to stderr and, optionally, to ``log_file``.

    Under a multi-process launch only the main process (RANK 0) logs at ``level`` and writes the
    file; the other ranks log warnings and errors only. A second call (a driver running several
    stages in one process) replaces the handlers of the first and leaves everyone else's alone.
    """
    rank = int(os.environ.get("RANK", "0"))
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and rank == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    root = logging.getLogger()
    for handler in _installed_handlers:
        root.removeHandler(handler)
        handler.close()
    _installed_handlers[:] = handlers
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)


def run_main(main: Callable[[], Any]) -> NoReturn:
    """Run a script's ``main()`` and exit with the status above; main's int result is the exit status."""
    try:
        result = main()
    except BaseException as exc:
        outcome = classify(exc)
        if outcome is None or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            raise
        message, status = outcome
        if _progress_bar_open():
            print(file=sys.stderr)  # the bar left the cursor mid-line
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(status) from None
    leave_process_group()  # a multi-process run: every rank finishes together
    raise SystemExit(result if isinstance(result, int) else 0)


def classify(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit status) for an expected failure; None for a bug or a SystemExit."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C); outputs finished before the interrupt are kept", EXIT_INTERRUPTED
    if isinstance(exc, (ConfigError, DataError, UnknownModelError)):
        return str(exc), EXIT_BAD_INPUT
    if isinstance(exc, Exception):
        message = describe_io_error(exc)
        if message is not None:
            return message, EXIT_IO_ERROR
    return None


def describe_io_error(exc: BaseException) -> str | None:
    """One line for an exception that is the file system's refusal, or None when it is something else.

    Looks at the exception and those it was raised from (a library that wraps the OSError), then at the writers that report a full disk in their own words (torch.save,
    safetensors), naming the file they were writing.
    """
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, OSError) and link.errno in HANDLED_ERRNOS:
            return _os_error_line(link.errno, link.strerror or str(link), link.filename, link.filename2)
    for link in chain:
        match = _RUST_OS_ERROR.search(str(link))
        if match and int(match.group(1)) in HANDLED_ERRNOS:
            number = int(match.group(1))
            return _os_error_line(number, os.strerror(number), _writer_path(chain))
    if any(marker in str(link) for link in chain for marker in _TORCH_WRITE_FAILED):
        path = _writer_path(chain)
        if path is not None and _free_bytes(path) < _NEARLY_FULL_BYTES:
            return _os_error_line(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        where = f"{path}: " if path is not None else ""
        return (f"{where}torch.save could not write the file ({str(exc).strip()[:120]}); a full disk or a "
                "read-only folder is the usual cause — check both and rerun")
    return None


def _os_error_line(number: int, strerror: str, filename: Any = None, filename2: Any = None) -> str:
    where = ""
    if filename is not None:
        where = os.fsdecode(filename) + (f" -> {os.fsdecode(filename2)}" if filename2 is not None else "") + ": "
    hint = next(text for numbers, text in _HINTS if number in numbers)
    return f"{where}{strerror} ({hint})"


def _chain(exc: BaseException, limit: int = 8) -> list[BaseException]:
    """The exception, then those it was raised ``from`` (cycles cut). Not the ones it was merely
    raised while handling: a bug in an ``except FileNotFoundError:`` branch must stay a bug."""
    links: list[BaseException] = []
    while exc is not None and exc not in links and len(links) < limit:
        links.append(exc)
        exc = exc.__cause__
    return links


def _writer_path(chain: list[BaseException]) -> str | None:
    """The file argument of the innermost torch.save/safetensors save_file frame in the tracebacks."""
    for exc in chain:
        found, tb = None, exc.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            for suffix, function, argument in _WRITER_FRAMES:
                if code.co_name == function and code.co_filename.endswith(suffix):
                    value = tb.tb_frame.f_locals.get(argument)
                    if isinstance(value, (str, os.PathLike)):
                        found = os.fspath(value)
            tb = tb.tb_next
        if found is not None:
            return found
    return None


def _progress_bar_open() -> bool:
    tqdm = sys.modules.get("tqdm")
    return bool(getattr(getattr(tqdm, "tqdm", None), "_instances", None))


def _free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(Path(path).parent).free
    except OSError:
        return 1 << 62  # cannot tell: do not claim the disk is full
