"""`python -m hetadam.remote`: the same as `hetadam serve`."""

from .serve import main

raise SystemExit(main())
