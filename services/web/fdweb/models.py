from __future__ import annotations

from django.conf import settings
from django.db import models


class Upload(models.Model):
    """A file a user uploaded: the bytes are in S3 (the default storage), the record here."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads")
    file = models.FileField(upload_to="%Y/%m/%d/", max_length=300)
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
