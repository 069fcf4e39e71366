"""The HTML pages: home, uploads, a parcel's history (from the tracking service)."""

from __future__ import annotations

import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from fdweb import tracking, uploads
from fdweb.models import Upload

PARCEL_CODE = re.compile(r"^[A-Za-z0-9-]{1,40}$")


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "fdweb/home.html")


@login_required
@require_http_methods(["GET", "POST"])
def upload_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        file = request.FILES.get("file")
        if file is None:
            messages.error(request, "Choose a file to upload.")
        else:
            try:
                stored = uploads.store(request.user, file)  # type: ignore[arg-type]
                messages.success(request, f"Uploaded {stored.name} ({stored.size} bytes).")
            except uploads.UploadRefused as refused:
                messages.error(request, f"Not uploaded: {refused}.")
        return redirect("uploads")
    return render(request, "fdweb/uploads.html", {"uploads": uploads.of(request.user)[:50]})  # type: ignore[arg-type]


@login_required
def download(request: HttpRequest, upload_id: int) -> FileResponse:
    try:
        upload = uploads.get(request.user, upload_id)  # type: ignore[arg-type]
    except Upload.DoesNotExist:
        raise Http404("no such upload") from None
    return FileResponse(uploads.open_file(upload), as_attachment=True, filename=upload.name,
                        content_type=upload.content_type)


def parcel(request: HttpRequest, code: str) -> HttpResponse:
    if not PARCEL_CODE.match(code):
        raise Http404("not a parcel code")
    try:
        history = tracking.parcel_history(code)
    except tracking.ParcelNotFound:
        return render(request, "fdweb/parcel_missing.html", {"code": code}, status=404)
    except tracking.TrackingUnavailable:
        return render(request, "fdweb/tracking_down.html", {"code": code}, status=503)
    return render(request, "fdweb/parcel.html", {"history": history})


def parcel_search(request: HttpRequest) -> HttpResponse:
    code = request.GET.get("code", "").strip()
    if code:
        return redirect("parcel", code=code)
    return redirect("home")
