"""Django settings: everything that differs between environments comes from fdweb.config (environment
variables); what is here is the same in the lab, staging and prod."""

from __future__ import annotations

from pathlib import Path

from botocore.config import Config as BotoConfig

from fdweb.config import Config, ConfigError, cannot_start

try:
    CONFIG = Config.from_env()
except ConfigError as error:
    cannot_start(error)

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = CONFIG.secret_key
DEBUG = CONFIG.debug
ALLOWED_HOSTS = CONFIG.allowed_hosts
CSRF_TRUSTED_ORIGINS = CONFIG.csrf_trusted_origins
RELEASE = CONFIG.release

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "fdweb",
]

MIDDLEWARE = [
    "fdweb.logs.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "fdweb.sessions.SessionMiddleware",
    "fdweb.unavailable.UnavailableMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "fdweb.urls"
WSGI_APPLICATION = "fdweb.wsgi.application"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": CONFIG.database.host,
    "PORT": CONFIG.database.port,
    "NAME": CONFIG.database.name,
    "USER": CONFIG.database.user,
    "PASSWORD": CONFIG.database.password,
    # Connections live across requests, checked before reuse: a restarted PostgreSQL costs no failed request.
    "CONN_MAX_AGE": 60,
    "CONN_HEALTH_CHECKS": True,
    "OPTIONS": {"connect_timeout": 3},
}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis holds the cache and the sessions (two key prefixes, one server); short socket timeouts, so a
# Redis that is down fails a request in about a second instead of holding a worker.
_REDIS_OPTIONS: dict[str, object] = {"socket_connect_timeout": 1, "socket_timeout": 2, "health_check_interval": 30}
if CONFIG.redis_password:
    _REDIS_OPTIONS["password"] = CONFIG.redis_password
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CONFIG.redis_url,
                "KEY_PREFIX": "cache", "TIMEOUT": 300, "OPTIONS": _REDIS_OPTIONS},
    "sessions": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CONFIG.redis_url,
                 "KEY_PREFIX": "session", "OPTIONS": _REDIS_OPTIONS},
}
# Django's cache sessions, but a Redis error fails the request instead of signing its user out (fdweb/sessions.py).
SESSION_ENGINE = "fdweb.sessions"
SESSION_CACHE_ALIAS = "sessions"
SESSION_COOKIE_AGE = 14 * 24 * 3600
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG and CONFIG.secure_cookies
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Behind nginx, which sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# Uploads go to S3 (or any S3-compatible store) through django-storages; static files too, collected by
# the release task `manage.py collectstatic` under hashed names (cache-busting), served by the object store.
_S3_CLIENT = BotoConfig(connect_timeout=2, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"} if CONFIG.s3.endpoint_url else None)
_S3_COMMON: dict[str, object] = {
    "endpoint_url": CONFIG.s3.endpoint_url,
    "region_name": CONFIG.s3.region,
    "access_key": CONFIG.s3.access_key,
    "secret_key": CONFIG.s3.secret_key,
    "client_config": _S3_CLIENT,
}
_PUBLIC = CONFIG.s3.public_url.split("://", 1)
STORAGES = {
    "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
        **_S3_COMMON, "bucket_name": CONFIG.s3.bucket, "location": "uploads", "file_overwrite": False,
        "default_acl": None, "querystring_auth": True}},
    "staticfiles": {"BACKEND": "storages.backends.s3.S3ManifestStaticStorage", "OPTIONS": {
        **_S3_COMMON, "bucket_name": CONFIG.s3.static_bucket, "location": "static", "default_acl": None,
        "querystring_auth": False, "custom_domain": _PUBLIC[1], "url_protocol": _PUBLIC[0] + ":",
        "object_parameters": {"CacheControl": "public, max-age=31536000, immutable"}}},
}
STATIC_URL = f"{CONFIG.s3.public_url}/static/"
STATICFILES_DIRS: list[Path] = []
# Uploads above 2.5 MB spool to /tmp, the container's tmpfs.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
WEB_UPLOAD_MAX_BYTES = 20 * 1024 * 1024

TRACKING_URL = CONFIG.tracking_url
TRACKING_TIMEOUT = CONFIG.tracking_timeout

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # The services' shared formatter (services/shared/fdservice, on PYTHONPATH in the image).
    "formatters": {"json": {"()": "fdservice.logs.JsonFormatter", "service": "web", "release": RELEASE}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json"}},
    "root": {"handlers": ["stdout"], "level": CONFIG.log_level},
    "loggers": {
        # Requests are logged once, by fdweb.logs.RequestLogMiddleware.
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "ERROR"},
    },
}
