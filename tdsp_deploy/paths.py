"""Where tdsp-deploy keeps things on this machine."""

from __future__ import annotations

import os
from pathlib import Path

HOME_VARIABLE = "TDSP_DEPLOY_HOME"


def state_home() -> Path:
    """``$TDSP_DEPLOY_HOME``, or the user's state directory for this platform."""
    configured = os.environ.get(HOME_VARIABLE)
    if configured:
        return Path(configured).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_state_dir("tdsp-deploy", appauthor=False))


def package_store() -> Path:
    """Built packages, named by content, shared by every endpoint and target."""
    return state_home() / "packages"
