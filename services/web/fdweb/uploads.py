"""The one home of the upload operations, for the pages and the API alike."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as S3ConnectionError
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db.models import QuerySet

from fdweb.models import Upload
from fdweb.unavailable import StorageUnavailable


class UploadRefused(ValueError):
    pass


def store(owner: AbstractBaseUser, upload: UploadedFile) -> Upload:
    """Store the file in S3 and record it; the record is written only once S3 has the bytes."""
    if upload.size is None or upload.size > settings.WEB_UPLOAD_MAX_BYTES:
        raise UploadRefused(f"files up to {settings.WEB_UPLOAD_MAX_BYTES} bytes")
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    name = (upload.name or "upload").rsplit("/", 1)[-1][:200]
    record = Upload(owner=owner, name=name, size=upload.size, sha256=digest.hexdigest(),
                    content_type=(upload.content_type or "application/octet-stream")[:100])
    with storage_reachable():
        record.file.save(name, upload, save=False)  # S3 PutObject: raises if the store refuses
    record.save()
    return record


@contextmanager
def storage_reachable() -> Iterator[None]:
    """S3 not answering (no connection, a timeout, a 5xx after the client's retries) is StorageUnavailable,
    which the request answers with 503; a refusal (a wrong key, a missing bucket) stays an error."""
    try:
        yield
    except (S3ConnectionError, HTTPClientError) as error:
        raise StorageUnavailable(str(error)) from error
    except ClientError as error:
        if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
            raise StorageUnavailable(str(error)) from error
        raise


def open_file(upload: Upload) -> object:
    """The stored bytes of an upload, opened for reading. django-storages fetches the object on its first
    read; that is done here, so an S3 outage is a 503 here rather than a 500 once the answer has begun."""
    with storage_reachable():
        handle = upload.file.open("rb")
        handle.seek(0)  # the GET (into a spooled temporary file)
    return handle


def of(owner: AbstractBaseUser) -> QuerySet[Upload]:
    return Upload.objects.filter(owner=owner)


def get(owner: AbstractBaseUser, upload_id: int) -> Upload:
    return Upload.objects.get(owner=owner, pk=upload_id)
