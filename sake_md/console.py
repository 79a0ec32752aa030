"""The one way the library speaks to a user besides its results: one line on stderr, flushed at once (stdout
stays for results, e.g. tables and JSON), prefixed "sake_md:"; warnings say so."""

import sys

__all__ = ["notify", "warn"]


def notify(message: str, verbose: bool = True) -> None:
    if verbose:
        print(f"sake_md: {message}", file=sys.stderr, flush=True)


def warn(message: str, verbose: bool = True) -> None:
    notify(f"warning: {message}", verbose)
