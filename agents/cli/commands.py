"""The registry of ``qflgym`` subcommands (:data:`COMMANDS`) and what counts as a user error.

A plugin registers a command (or a command group) with::

    from qflgym.agents.cli.commands import COMMANDS, Command

    def configure(parser):            # add arguments, or sub-subparsers for a command group
        sub = parser.add_subparsers(dest="llm_command", required=True)
        sft = sub.add_parser("sft", help="distil a controller into the LLM policy")
        sft.set_defaults(run=run_sft)  # a sub-subcommand overrides ``run`` with set_defaults

    COMMANDS.add("llm", Command("llm", "LLM policies: sft, grpo, eval", configure))

This module imports nothing heavy, so plugins can import it without importing the CLI itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from qflgym.config import ConfigError
from qflgym.registry import Registry, UnknownNameError

__all__ = ["COMMANDS", "USER_ERRORS", "Command", "UserInputError"]


class UserInputError(ConfigError):
    """A command-line value a user can fix (a count out of range, an unknown name): reported in one line."""


@dataclass(frozen=True)
class Command:
    """One ``qflgym`` subcommand.

    Attributes:
        name: The subcommand (``train``).
        help: One line for ``qflgym --help``.
        configure: Adds the subcommand's arguments (or its own subparsers) to its parser.
        run: ``run(args) -> exit status``; optional when ``configure`` sets ``run`` per sub-subcommand.
        description: Longer text for ``qflgym <name> --help`` (default: ``help``).
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int] | None = None
    description: str | None = None


#: Subcommands by name.
COMMANDS: Registry[Command] = Registry("qflgym command", entry_point_group="qflgym.commands")


#: Exceptions reported as one-line user errors (exit status 2): invalid configs and values (``ConfigError`` and
#: its subclasses: an algorithm that cannot act in an env, a Ray cluster that refuses the connection), names no
#: registry has, and missing files. Anything else (a ``TypeError``, a plain ``KeyError``) is a bug and keeps its
#: traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, UnknownNameError, FileNotFoundError)
