"""Progress bars for long steps (tqdm, on stderr; silent when disabled)."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def progress_bar(total: int, desc: str, disable: bool = False, unit: str = "it"):
    """A tqdm bar on stderr, or a no-op object when ``disable`` or ``CDT_BAYES_NO_PROGRESS=1``."""
    disable = disable or os.environ.get("CDT_BAYES_NO_PROGRESS") == "1"
    if disable:

        class _Null:
            def update(self, n=1):
                pass

            def set_postfix_str(self, s):
                pass

            def refresh(self):
                pass

        yield _Null()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0, dynamic_ncols=True) as bar:
        yield bar
