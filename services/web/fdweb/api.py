"""The JSON API under /api/, signed in with the same session as the pages."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods

from fdweb import uploads
from fdweb.views import download

View = Callable[..., HttpResponse]


def signed_in(view: View) -> View:
    """401 in JSON rather than the pages' redirect to the sign-in form."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_authenticated:
            return JsonResponse({"error": "sign in first"}, status=401)
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
def version(_request: HttpRequest) -> JsonResponse:
    return JsonResponse({"service": "web", "release": settings.RELEASE})


@require_GET
@signed_in
def me(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"username": request.user.get_username()})


@require_http_methods(["GET", "POST"])
@signed_in
def upload_list(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        file = request.FILES.get("file")
        if file is None:
            return JsonResponse({"error": "a multipart field 'file' is required"}, status=400)
        try:
            stored = uploads.store(request.user, file)  # type: ignore[arg-type]
        except uploads.UploadRefused as refused:
            return JsonResponse({"error": str(refused)}, status=413)
        return JsonResponse(stored.as_json(), status=201)
    return JsonResponse({"uploads": [u.as_json() for u in uploads.of(request.user)[:100]]})  # type: ignore[arg-type]


@require_GET
@signed_in
def upload_content(request: HttpRequest, upload_id: int) -> FileResponse:
    return download(request, upload_id)

