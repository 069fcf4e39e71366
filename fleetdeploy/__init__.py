"""fleetdeploy: Ansible roles and playbooks for a Docker fleet, and the helpers around them."""
