from django.contrib.auth import views as auth_views
from django.urls import path

from fdweb import api, health, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("accounts/login/", auth_views.LoginView.as_view(template_name="fdweb/login.html"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("uploads/", views.upload_page, name="uploads"),
    path("uploads/<int:upload_id>", views.download, name="download"),
    path("parcels/", views.parcel_search, name="parcel_search"),
    path("parcels/<str:code>", views.parcel, name="parcel"),
    path("api/version", api.version),
    path("api/me", api.me),
    path("api/uploads", api.upload_list),
    path("api/uploads/<int:upload_id>/content", api.upload_content),
]
