"""The lab: hosts reachable over SSH with host keys checked, growth that leaves hosts alone, a clean destroy.

A lab of its own (lab_name fdtest, its own ports and inventory) so the suite never touches yours.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

from helpers import REPO, SLOT_SUFFIX, playbook, run, slot_port

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = f"fdtest{SLOT_SUFFIX}"
LABEL = "org.fleetdeploy.lab"


def lab_vars(tmp: Path, app_hosts: int) -> dict[str, object]:
    return {
        "lab_name": LAB,
        "lab_app_hosts": app_hosts,
        "lab_ssh_port_base": slot_port(2300),
        "lab_http_port": slot_port(18080),
        "lab_https_port": slot_port(18443),
        "lab_prometheus_port": slot_port(19090),
        "lab_alertmanager_port": slot_port(19093),
        "lab_registry_port": slot_port(15443),
        "lab_state_dir": str(tmp / "state"),
        "lab_inventory_file": str(tmp / "hosts.yml"),
    }


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    return docker.from_env()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, client: docker.DockerClient):
    tmp = tmp_path_factory.mktemp("lab")
    # Whatever an interrupted earlier run left behind goes first.
    playbook("playbooks/lab_destroy.yml", extra_vars=lab_vars(tmp, 1)).check()
    playbook("playbooks/lab.yml", "-i", str(tmp / "hosts.yml"), extra_vars=lab_vars(tmp, 3)).check()
    yield tmp
    playbook("playbooks/lab_destroy.yml", extra_vars=lab_vars(tmp, 1))


def lab_containers(client: docker.DockerClient) -> dict[str, str]:
    found = client.containers.list(all=True, filters={"label": f"{LABEL}={LAB}"})
    return {c.labels["org.fleetdeploy.host"]: c.id for c in found}


def ssh(tmp: Path, port: int, known_hosts: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh", "-p", str(port), "-i", str(tmp / "state" / "ssh" / "id_ed25519"),
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "admin@127.0.0.1", command,
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_lab_starts_every_host_and_writes_their_inventory(lab: Path, client: docker.DockerClient) -> None:
    assert sorted(lab_containers(client)) == ["app1", "app2", "app3", "data1", "lb1", "monitor1", "ops1"]
    assert {client.containers.get(c).attrs["HostConfig"]["CpuShares"] for c in lab_containers(client).values()} == {1024}
    inventory = (lab / "hosts.yml").read_text()
    for group in ("ops:", "lb:", "app:", "monitor:", "data:"):
        assert group in inventory


def test_every_host_answers_ansible_over_ssh_with_host_keys_checked(lab: Path) -> None:
    result = run(
        [str(REPO / ".venv/bin/ansible"), "all", "-i", str(lab / "hosts.yml"), "-m", "ansible.builtin.ping"],
        ANSIBLE_HOST_KEY_CHECKING="True",
    ).check()
    assert result.output.count("SUCCESS") == 7, result.output


def test_the_known_hosts_the_lab_wrote_is_what_the_hosts_present(lab: Path) -> None:
    known = lab / "state" / "known_hosts"
    answer = ssh(lab, slot_port(2311), known, "hostname")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "app1"
    # With no known host key, strict checking must refuse: the check is really on.
    empty = lab / "empty_known_hosts"
    empty.write_text("")
    refused = ssh(lab, slot_port(2311), empty, "hostname")
    assert refused.returncode != 0
    assert "Host key verification failed" in refused.stderr


def test_hosts_boot_systemd_and_app_hosts_keep_docker_data_on_a_volume(lab: Path, client: docker.DockerClient) -> None:
    for name, cid in lab_containers(client).items():
        container = client.containers.get(cid)
        state = container.exec_run(["systemctl", "is-system-running", "--wait"]).output.decode().strip()
        failed = container.exec_run(["systemctl", "--failed", "--no-legend"]).output.decode().strip()
        assert state == "running", f"{name}: systemd is {state}; failed units: {failed}"
        docker_mounts = [m for m in container.attrs["Mounts"] if m["Destination"] == "/var/lib/docker"]
        if name.startswith("app") or name == "ops1":
            assert docker_mounts and docker_mounts[0]["Type"] == "volume", name


def test_lb_ports_are_published_on_loopback_only(lab: Path, client: docker.DockerClient) -> None:
    lb = client.containers.get(lab_containers(client)["lb1"])
    ports = lb.attrs["HostConfig"]["PortBindings"]
    assert ports["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(slot_port(18080))}]
    assert ports["8443/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(slot_port(18443))}]


def test_rerunning_the_lab_changes_nothing(lab: Path) -> None:
    again = playbook("playbooks/lab.yml", "-i", str(lab / "hosts.yml"), extra_vars=lab_vars(lab, 3)).check()
    assert again.changed() == 0, again.output[-4000:]


def test_growing_the_fleet_adds_hosts_and_leaves_the_others_running(lab: Path, client: docker.DockerClient) -> None:
    before = lab_containers(client)
    # A new CPU weight as well: the running hosts take it in place.
    playbook("playbooks/lab.yml", "-i", str(lab / "hosts.yml"),
             extra_vars=dict(lab_vars(lab, 4), lab_cpu_shares=2048)).check()
    after = lab_containers(client)
    assert set(after) == set(before) | {"app4"}
    assert {name: after[name] for name in before} == before
    assert {client.containers.get(c).attrs["HostConfig"]["CpuShares"] for c in after.values()} == {2048}
    answer = ssh(lab, slot_port(2314), lab / "state" / "known_hosts", "hostname")
    assert answer.stdout.strip() == "app4", answer.stderr


def test_destroy_removes_exactly_what_the_lab_created(lab: Path, client: docker.DockerClient) -> None:
    decoy_labels = {LABEL: "someone-else"}
    network = client.networks.create("fdtest-decoy", labels=decoy_labels)
    volume = client.volumes.create("fdtest-decoy", labels=decoy_labels)
    container = client.containers.create("fleetdeploy/host:debian12", name="fdtest-decoy", labels=decoy_labels)
    try:
        playbook("playbooks/lab_destroy.yml", extra_vars=lab_vars(lab, 4)).check()
        assert lab_containers(client) == {}
        assert client.networks.list(filters={"label": f"{LABEL}={LAB}"}) == []
        assert client.volumes.list(filters={"label": f"{LABEL}={LAB}"}) == []
        assert not (lab / "state").exists()
        assert not (lab / "hosts.yml").exists()
        client.networks.get(network.id)
        client.volumes.get(volume.name)
        client.containers.get(container.id)
    finally:
        container.remove(force=True)
        volume.remove(force=True)
        network.remove()
