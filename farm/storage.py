"""Object storage (S3 / MinIO / SeaweedFS) through the minio SDK, behind a small interface."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Protocol

import urllib3
from minio import Minio
from minio.error import S3Error

from farm.config import Settings


class Storage(Protocol):
    def put_file(self, key: str, path: str, content_type: str) -> None: ...
    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...
    def get_file(self, key: str, path: str) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def url_for(self, key: str) -> str: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def ping(self) -> None: ...


class S3Storage:
    """Keys are always built by the farm (``jobs/<id>/...``), never from names a scene chose."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.expiry = timedelta(seconds=settings.result_url_expiry_seconds)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            retries=urllib3.Retry(total=3, backoff_factor=0.3, status_forcelist=(500, 502, 503)),
        )
        args = dict(
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
        self.client = Minio(settings.s3_endpoint, http_client=http, **args)  # type: ignore[arg-type]
        # Presigning needs no request, but the signature covers the host clients will use.
        self.public = Minio(settings.s3_public_endpoint or settings.s3_endpoint, **args)  # type: ignore[arg-type]

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:  # a concurrent creator won the race
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_file(self, key: str, path: str, content_type: str) -> None:
        self.client.fput_object(self.bucket, key, path, content_type=content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )

    def get_file(self, key: str, path: str) -> None:
        try:
            self.client.fget_object(self.bucket, key, path)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise FileNotFoundError(key) from exc
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise FileNotFoundError(key) from exc
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def url_for(self, key: str) -> str:
        return self.public.presigned_get_object(self.bucket, key, expires=self.expiry)

    def delete_prefix(self, prefix: str) -> None:
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if obj.object_name:
                self.client.remove_object(self.bucket, obj.object_name)

    def ping(self) -> None:
        self.client.bucket_exists(self.bucket)
