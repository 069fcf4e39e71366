#!/usr/bin/env python3
"""Django's command line; the release tasks are `manage.py migrate --noinput` and `manage.py collectstatic --noinput`."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fdweb.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
