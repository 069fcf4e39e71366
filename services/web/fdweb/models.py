from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


def upload_key(_upload: "Upload", filename: str) -> str:
    """Where an upload's bytes go in the bucket: a key no other upload can have. S3 has no "create if absent",
    so finding a free name first and then writing it races: two uploads of sample.bin at once from two hosts
    both found the same free name, and the second overwrote the first's bytes (its record kept the first's
    sha256). A random part makes each key unique without asking the store."""
    return f"{timezone.now():%Y/%m/%d}/{uuid.uuid4().hex}/{filename}"


class Upload(models.Model):
    """A file a user uploaded: the bytes are in S3 (the default storage), the record here."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads")
    file = models.FileField(upload_to=upload_key, max_length=300)
    name = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=100)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created", "-id"]

    def as_json(self) -> dict[str, object]:
        return {"id": self.pk, "name": self.name, "size": self.size, "sha256": self.sha256,
                "content_type": self.content_type, "created": self.created.isoformat(),
                "download": f"/api/uploads/{self.pk}/content"}
