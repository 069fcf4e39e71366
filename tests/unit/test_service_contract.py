"""The service contract of deploy_services (docs/deploy.md, "Services") is checked by deploy.yml's preflight.

Real ansible-playbook runs of deploy.yml, no lab needed: the preflight runs on ops[0], here the controller
itself (a local connection), with the deploy tests' group_vars (tests/fixtures/demo_lab) and three app hosts that are never
reached. Each bad input must fail in the preflight with a message naming deploy_services and the service,
before the lock and before any app host: the recap lists ops1 alone, with nothing changed. (One
ansible-playbook run per case: running every case in one run as plays of a driver playbook cost the same
CPU, 30 s, since the time goes to the tasks, not to Ansible's start-up.) The deploy lab's
preflight tests (tests/test_deploy.py) prove the same against real hosts for the older checks.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from helpers import DEMO_SERVICES, Run, link_demo_group_vars, playbook

DEMO = yaml.safe_load(DEMO_SERVICES.read_text())["deploy_services"][0]
# A unreachable registry: a run that passes every contract check fails at the registry's HEAD instead.
REGISTRY = "127.0.0.1:9"


def http(name: str, path: str, port: int, **keys: object) -> dict:
    service = copy.deepcopy(DEMO)
    service.update({"name": name, "host_ports": [port, port + 1], "routes": [{"path": path}], **keys})
    return service


def worker(name: str, **keys: object) -> dict:
    service = {key: value for key, value in copy.deepcopy(DEMO).items()
               if key not in ("container_port", "host_ports", "health_path", "routes")}
    service.update(name=name, kind="worker", **keys)
    return service


# Release tasks: a migration with a timeout, and a cache warm-up with the default one and a number in its argv.
TASKS = [
    {"name": "migrate", "service": "api", "command": ["python3", "manage.py", "migrate"], "timeout": 120},
    {"name": "warm-cache", "service": "web", "command": ["python3", "warm.py", "--pages", 50]},
]

# Three http services on three prefixes (one also by host name) and two well-formed workers, one a singleton.
GOOD = [
    http("web", "/", 8001),
    http("api", "/api/", 8003, routes=[{"path": "/api/"}, {"path": "/", "hosts": ["api.example.com"]}]),
    http("tracking", "/tracking/", 8005),
    worker("mailer", stop_grace_period=30),
    worker("scheduler", singleton=True),
]


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("contract")
    # The deploy engine's contract alone: the demo's group_vars, no data host, no application secrets.
    link_demo_group_vars(root)
    local = {"ansible_connection": "local", "ansible_become": False,
             "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    (root / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "ops": {"hosts": {"ops1": local}},
        "app": {"hosts": {f"app{n}": local for n in (1, 2, 3)}},
        "empty": {"hosts": {}},
    }}}))
    return root


def deploy(inventory: Path, services: list[dict], **extra: object) -> Run:
    return playbook("deploy.yml", "-i", str(inventory), extra_vars={
        "release": "v1", "deploy_services": services, "fleetdeploy_registry": REGISTRY, **extra})


def assert_refused_in_preflight(run: Run, *phrases: str) -> None:
    message = " ".join(run.output.split())
    assert run.returncode != 0, run.output[-3000:]
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in:\n{run.output[-3000:]}"
    assert "Nothing was changed" in message
    # Before the lock and the app hosts: only the ops host ran, and it changed nothing.
    assert set(run.recap()) == {"ops1"}, run.recap()
    assert run.recap()["ops1"]["changed"] == 0 and run.recap()["ops1"]["failed"] == 1
    assert "Take the deploy lock" not in run.output


def test_a_valid_multi_service_contract_passes_every_check_up_to_the_registry(inventory: Path) -> None:
    # Three http services, two workers (one a singleton, one with a command of its own) and release tasks.
    run = deploy(inventory, [*GOOD[:3], dict(GOOD[3], command=["python3", "consume.py"]), GOOD[4]],
                 deploy_release_tasks=TASKS)
    assert run.returncode != 0
    # Every contract check passed: the first failure is the registry's HEAD, which the test points nowhere.
    failed = [line for line in run.output.splitlines() if line.startswith("TASK [")]
    assert "Check that the registry has every image" in failed[-1], run.output[-3000:]
    assert set(run.recap()) == {"ops1"}


BAD = {
    "unknown kind": ([dict(GOOD[0], kind="cron")], ["deploy_services: service web has kind 'cron'"]),
    "http without health path": ([{k: v for k, v in GOOD[0].items() if k != "health_path"}],
                                 ["deploy_services: http service web needs", "health_path"]),
    "http without port": ([{k: v for k, v in GOOD[0].items() if k != "container_port"}],
                          ["deploy_services: http service web needs", "container_port"]),
    "http with one host port": ([dict(GOOD[0], host_ports=[8001])], ["deploy_services: http service web needs"]),
    "two services on one prefix": ([GOOD[0], http("shop", "/", 8007)],
                                   ["deploy_services: services web and shop share the route any host /"]),
    "two services on one host name and prefix": (
        [GOOD[1], http("admin", "/", 8007, routes=[{"path": "/", "hosts": ["admin.example.com", "api.example.com"]}])],
        ["deploy_services: services api and admin share the route api.example.com /"]),
    "an env name that is no identifier": ([dict(GOOD[0], env={"GOOD_NAME": "1", "BAD-NAME": "2", "9LIVES": "3"})],
                                          ["deploy_services: service web has env variable name(s) BAD-NAME, 9LIVES"]),
    "a worker with a port and a route": ([GOOD[0], dict(GOOD[3], container_port=8000, routes=[{"path": "/m/"}])],
                                         ["deploy_services: worker mailer is not routed", "container_port, routes"]),
    "a singleton http service": ([dict(GOOD[0], singleton=True)], ["deploy_services: http service web needs"]),
    "a worker whose command is one string": ([GOOD[0], dict(GOOD[3], command="consume --queue mail")],
                                             ["Service mailer has a bad container setting",
                                              "'command': 'consume --queue mail'"]),
    "a singleton worker whose group has no host": ([GOOD[0], dict(GOOD[4], group="empty")],
                                                    ["deploy_services: singleton worker scheduler", "'empty'",
                                                     "has no host"]),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_service_fails_the_preflight_naming_it_and_changes_nothing(inventory: Path, case: str) -> None:
    services, phrases = BAD[case]
    assert_refused_in_preflight(deploy(inventory, services), *phrases)


BAD_TASKS = {
    "a task with no command": ([{"name": "migrate", "service": "api"}],
                               ["deploy_release_tasks: task migrate needs command"]),
    "a task with a command as one string": ([dict(TASKS[0], command="manage.py migrate")],
                                            ["deploy_release_tasks: task migrate needs command",
                                             "'command': 'manage.py migrate'"]),
    "a task of an unknown service": ([dict(TASKS[0], service="billing")],
                                     ["deploy_release_tasks: task migrate needs", "'service': 'billing'"]),
    "a task with a bad timeout": ([dict(TASKS[0], timeout=0)], ["deploy_release_tasks: task migrate needs",
                                                                "timeout (whole seconds above 0", "'timeout': 0"]),
    "two tasks of one name": ([TASKS[0], dict(TASKS[1], name="migrate")],
                              ["deploy_release_tasks must be a list", "['migrate', 'migrate']"]),
}


@pytest.mark.parametrize("case", BAD_TASKS, ids=list(BAD_TASKS))
def test_a_bad_release_task_fails_the_preflight_naming_it_and_changes_nothing(inventory: Path, case: str) -> None:
    tasks, phrases = BAD_TASKS[case]
    assert_refused_in_preflight(deploy(inventory, GOOD[:3], deploy_release_tasks=tasks), *phrases)
