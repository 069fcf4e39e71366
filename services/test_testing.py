"""services/testing.py itself: what it keeps of the throw-away passwords stays private to this user."""

from __future__ import annotations

import os
import secrets
import stat

import pytest
import testing


def test_a_failed_docker_call_names_the_variables_but_not_their_values() -> None:
    canary = f"canary-{secrets.token_hex(8)}"
    with pytest.raises(AssertionError) as failed:
        testing._docker("exec", "-e", f"PGPW={canary}", f"{testing.PREFIX}-no-such-container", "true")
    assert "PGPW=..." in str(failed.value) and canary not in str(failed.value)


def test_the_registry_and_env_files_are_private_to_this_user() -> None:
    canary = f"canary-{secrets.token_hex(8)}"
    with testing._registry():
        pass
    with testing._env_file({"PGPASSWORD": canary}) as args:
        env_file = args[1]
        assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
        assert canary not in " ".join(args)
    assert not os.path.exists(env_file)
    assert stat.S_IMODE(testing.STATE_DIR.stat().st_mode) == 0o700
    assert stat.S_IMODE(testing.LOCK.stat().st_mode) == 0o600 and testing.LOCK.parent == testing.STATE_DIR
