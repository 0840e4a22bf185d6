"""The ``qflgym`` command line.

:mod:`.main` (the entry point), :mod:`.commands` (the command registry), one module per built-in
command, :mod:`.args` (shared argument helpers).
"""
