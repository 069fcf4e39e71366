"""Stands in for site.yml in tests/test_aws_join.py, whose EC2 instances (moto's) cannot be reached: it records
how playbooks/join.yml called it, and what a deploy trying to start at that moment is told by the deploy lock,
then exits with the code the test asks for (a non-zero one with a message, as a failed site.yml would).

    join_ready_standin.py <report.json> <exit code> <the arguments join.yml adds>...
"""

from __future__ import annotations

import json
import sys
import time

from helpers import VENV_BIN, run


def main() -> int:
    report, code, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    started = time.time()
    lock = {"name": "staging", "run_id": "a-deploy", "holder": "bob", "action": "deploy v9", "backend": "dynamodb",
            "table": "fleetdeploy-locks", "region": "eu-west-1"}
    deploy = run([str(VENV_BIN / "ansible"), "localhost", "-m", "fleetdeploy_lock", "-a", json.dumps(lock)])
    with open(report, "w", encoding="utf-8") as out:
        json.dump({"args": args, "started": started, "ended": time.time(),
                   "deploy_refused": deploy.returncode != 0, "deploy_output": deploy.output}, out)
    if code:
        print("TASK [nginx : Start nginx] failed: nginx would not start", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
