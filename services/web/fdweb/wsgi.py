"""The WSGI application uWSGI serves. uWSGI imports this module once per container, in its master, before
it forks the workers (uwsgi.ini has no lazy-apps): what is done here is done before any request is answered.
"""

import os

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.contrib.staticfiles.storage import staticfiles_storage
from django.core.wsgi import get_wsgi_application
from storages.backends.s3 import S3ManifestStaticStorage

from fdweb.config import cannot_start

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fdweb.settings")
application = get_wsgi_application()


def read_static_manifest() -> None:
    """Every page names its static files by the hashed names of the manifest `collectstatic` wrote to S3.
    The storage reads that manifest when it is first used: left alone, each worker of a new container read
    it from S3 on its first page, which then waited on S3 (up to the client's read timeout, per attempt).
    Read here, it is read once, and the workers inherit it. A manifest that cannot be read, or is not there,
    stops the start with one line rather than failing every page later; DEBUG serves names without hashes
    and needs no manifest, but S3 must answer (the storage asks for it all the same)."""
    options = settings.STORAGES["staticfiles"]["OPTIONS"]
    where = f"s3://{options['bucket_name']}/{options['location']}/{S3ManifestStaticStorage.manifest_name}"
    try:
        hashed = staticfiles_storage.hashed_files
    except (BotoCoreError, ClientError) as error:
        cannot_start(f"the static manifest {where} could not be read: {error}")
    except ValueError as error:  # Django's "Couldn't load manifest" for a file that is not one
        cannot_start(f"the static manifest {where} is not one collectstatic wrote: {error}")
    if not hashed and not settings.DEBUG:
        cannot_start(f"no static manifest at {where}: run the release task `manage.py collectstatic --noinput` first")
    # The workers must not share the master's connection to S3 (one socket, several processes); they never
    # use this storage's connection (a static URL is built from the manifest), but close it all the same.
    staticfiles_storage.connection.meta.client.close()


read_static_manifest()
