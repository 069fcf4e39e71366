# Thin targets over the scripts and playbooks; each says what it is for.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= true

.PHONY: help setup venv engine browser test-registry image lab lab-destroy console lint test lock bench bench-deploy bench-console-lab

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

venv: ## Create .venv from the pins (fast when nothing changed)
	@bash scripts/setup-venv.sh

engine: ## Make sure a Docker engine answers, installing and starting one if needed
	@bash scripts/ensure-engine.sh

browser: ## Install Debian's Chromium for the console's browser test, when missing
	@bash scripts/ensure-package.sh chromium /usr/bin/chromium

test-registry: ## Install Debian's docker-registry for the promotion test (two registries on 127.0.0.1)
	@bash scripts/ensure-package.sh docker-registry /usr/bin/docker-registry

setup: venv engine ## Everything the other targets need on this machine

image: setup ## Build (or reuse) the Debian 12 and 13 host images
	ansible-playbook playbooks/lab_image.yml

RELEASE ?= v1

lab: setup ## Bring up the lab, provision it and deploy release $(RELEASE) (default v1)
	ansible-playbook playbooks/lab.yml
	ansible-playbook site.yml
	# A lab builds from a working tree that may hold uncommitted changes (docs/deploy.md, "Build provenance").
	ansible-playbook playbooks/build.yml -e release=$(RELEASE) -e build_allow_dirty=true
	ansible-playbook deploy.yml -e release=$(RELEASE)
	ansible-playbook playbooks/lab_seed.yml
	@bash scripts/lab-summary.sh

lab-destroy: venv ## Remove the lab's containers, network, volumes and keys
	ansible-playbook playbooks/lab_destroy.yml

lint: venv ## ansible-lint (production profile), yamllint and a syntax check of every playbook
	bash scripts/lint.sh

console: setup ## Run the deploy console against the lab on http://127.0.0.1:8765
	fleetdeploy-console serve --config fleetdeploy/console/examples/lab.yml

test: setup browser test-registry image ## The whole test suite, from a clean clone (lint runs inside it: tests/test_lint.py)
	pytest -n 3

bench: setup image ## Timings of setup, image and lab, a module run's CPU on a host, the console (JSON)
	python benchmarks/foundation.py
	python benchmarks/modules.py
	python benchmarks/console.py

bench-deploy: setup image ## Deploys under load on 1, 2, 3 and 6 app hosts, batch 1 and 50%, and an app host failing (JSON; about an hour)
	python benchmarks/deploy.py

bench-console-lab: setup ## The console driving the lab's real deploy against plain ansible-playbook (needs `make lab` and release v2)
	python benchmarks/console_lab.py

lock: ## Re-pin constraints.txt from requirements.txt (needs PyPI)
	bash scripts/lock.sh
