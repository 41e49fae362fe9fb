"""`python -m p2p ...` behaves exactly like the `p2p` console script."""

from p2p.cli import main

raise SystemExit(main())
