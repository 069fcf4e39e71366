"""playbooks/tasks/end_batch_on_failure.yml weighs a batch's failures as Ansible's max_fail_percentage does.

Real ansible-playbook runs on three local stand-ins for app hosts, each failing or not as roll_host.yml
notes it (app_release_failure); no lab needed. The deploy lab's bad-on-app2 test proves the same end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import REPO, playbook

PLAYBOOK = f"""
- name: Roll the stand-in app hosts batch by batch, as deploy.yml does
  hosts: app
  gather_facts: false
  serial: "{{{{ deploy_serial }}}}"
  tasks:
    - name: Note a failure on the hosts named, as roll_host.yml's rescue does
      ansible.builtin.set_fact:
        app_release_failure: "{{{{ {{'host': inventory_hostname}} if inventory_hostname in failing else {{}} }}}}"

    - name: Stop before the next batch if this one failed more than allowed
      ansible.builtin.import_tasks: {REPO}/playbooks/tasks/end_batch_on_failure.yml

    - name: Note that this host's batch went on
      ansible.builtin.set_fact:
        went_on: true

- name: Write down which hosts went on and where the rollout stopped
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Write the outcome
      ansible.builtin.copy:
        dest: "{{{{ outcome }}}}"
        mode: "0644"
        content: >-
          {{{{ {{'went_on': _hosts | selectattr('went_on', 'defined') | map(attribute='inventory_hostname') | list,
               'stopped': _hosts | selectattr('_deploy_rollout_stopped', 'defined') | map(attribute='inventory_hostname') | list}}
             | to_json }}}}
      vars:
        _hosts: "{{{{ groups['app'] | map('extract', hostvars) | list }}}}"
"""


@pytest.mark.parametrize(("serial", "max_fail", "failing", "went_on", "stopped"), [
    # Within the percentage (1 of 2 is 50%, not more): the rollout goes on to app3, app2 included.
    (2, 50, ["app2"], ["app1", "app2", "app3"], []),
    (3, 34, ["app2"], ["app1", "app2", "app3"], []),
    # Over it: no further batch starts.
    (2, 49, ["app2"], [], ["app1", "app2"]),
    (3, 0, ["app2"], [], ["app1", "app2", "app3"]),
    # A batch that failed entirely always stops, whatever the percentage.
    (1, 50, ["app2"], ["app1"], ["app2"]),
    # No failure: every batch runs.
    (1, 0, [], ["app1", "app2", "app3"], []),
], ids=["2-50-goes-on", "3-34-goes-on", "2-49-stops", "3-0-stops", "1-50-whole-batch-stops", "no-failure"])
def test_a_batch_stops_the_rollout_only_when_its_failures_exceed_the_percentage(
        tmp_path: Path, serial: int, max_fail: int, failing: list[str], went_on: list[str], stopped: list[str]) -> None:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    (tmp_path / "hosts.json").write_text(json.dumps({"all": {
        "hosts": {"localhost": local},
        "children": {"app": {"hosts": {name: local for name in ("app1", "app2", "app3")}}}}}))
    (tmp_path / "roll.yml").write_text(PLAYBOOK)
    outcome = tmp_path / "outcome.json"
    run = playbook(str(tmp_path / "roll.yml"), "-i", str(tmp_path / "hosts.json"), extra_vars={
        "deploy_serial": serial, "deploy_max_fail_percentage": max_fail, "failing": failing, "outcome": str(outcome)})
    run.check()
    assert json.loads(outcome.read_text()) == {"went_on": went_on, "stopped": stopped}
