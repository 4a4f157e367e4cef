"""The `llmcycle` command line: each verb parses its flags and calls one function of the Python API.

One module a lifecycle stage (generate, train, align, deploy, plan, lifecycle, rag); `options.py` holds the flags
several verbs share. A user error prints one line starting `error:` and exits 2, with no traceback unless
`--debug` is given (anywhere on the command line, or LLMCYCLE_DEBUG=1); with `--debug`, a user error caused by a
library's exception shows that exception as its cause.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings

import click

from ..console import err
from ..errors import ReportedError, UserError
from ..quantization import NOISY_LOGGERS
from . import align, deploy, generate, label, lifecycle, plan, rag, serve, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="llmcycle")
def cli():
    """llmcycle: prompt, fine-tune, evaluate, align and deploy a pretrained language model.

    Add --debug to any command to see tracebacks.
    """


for _stage in (generate, train, align, label, deploy, serve, lifecycle, plan, rag):
    for _command in _stage.COMMANDS:
        cli.add_command(_command)


def _quiet_libraries() -> None:
    """Our own progress bars replace the libraries' per-file ones. Warning filters are left to the user.

    torchao (which peft imports when it is installed) logs a line for each CUDA kernel library it cannot load
    on a CPU, and torch's pytree logs a deprecation for each of torchao's enums: noise on every command, not
    something a user can act on; errors still show.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _report_user_error(exc: Exception, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
    err.print("error: " + " ".join(message.split()), highlight=False, markup=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("LLMCYCLE_DEBUG") == "1"
    args = [arg for arg in args if arg != "--debug"]
    saved_debug = os.environ.get("LLMCYCLE_DEBUG")
    if debug:
        os.environ["LLMCYCLE_DEBUG"] = "1"  # training processes started by the launcher inherit it
    try:
        _quiet_libraries()
        with warnings.catch_warnings():  # the libraries' deprecation notices are not for users; restored after
            warnings.simplefilter("ignore", FutureWarning)
            cli.main(args=args, prog_name="llmcycle", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("error: interrupted")
        sys.exit(130)
    except ReportedError as exc:
        sys.exit(exc.exit_code)  # the training processes printed the error themselves
    except (click.UsageError, UserError) as exc:
        _report_user_error(exc, debug)
        sys.exit(2)
    finally:
        if saved_debug is None:
            os.environ.pop("LLMCYCLE_DEBUG", None)
