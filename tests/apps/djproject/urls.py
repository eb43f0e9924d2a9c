from __future__ import annotations

from django.urls import path

from tests.apps.djproject import views

urlpatterns = [
    path("items/<int:item_id>", views.item, name="item"),
    path("echo", views.echo),
    path("stream/<str:token>", views.stream),
    path("release/<str:token>", views.release),
    path("astream/<str:token>", views.astream),
    path("arelease/<str:token>", views.arelease),
    path("error", views.error),
    path("headers", views.headers),
    path("url", views.url),
    path("async", views.async_view),
]
