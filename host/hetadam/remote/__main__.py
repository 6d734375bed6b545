"""`python -m hetadam.remote`: the same as `hetadam serve`."""

from .server import main

raise SystemExit(main())
