"""The `ddim` command. Bad input gives a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from .parser import build_parser

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a malformed flag (argparse has printed usage and the error)
        return int(e.code or 0)
    from ..core.errors import UsageError

    try:
        return int(args.func(args) or 0)
    except (UsageError, FloatingPointError, OSError) as e:  # bad input, a diverging run, an unusable file
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"ddim {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. a collective timed out because another rank died
        print(f"ddim {args.command}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ddim {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch" in sys.modules:
            from ..io.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    sys.exit(main())
