"""`manage.py ensure_user NAME < password`: create a user that can sign in, once (a release task or
`make lab` may run it again: an existing user is left as it is). The password comes on stdin, never argv."""

from __future__ import annotations

import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Create a user with the password read from stdin, unless that user exists"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        username = options["username"]
        if users.objects.filter(username=username).exists():
            self.stdout.write(f"user {username} exists: left as it is")
            return
        password = sys.stdin.readline().rstrip("\n")
        try:
            validate_password(password)
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        users.objects.create_user(username=username, password=password)
        self.stdout.write(f"user {username} created")
