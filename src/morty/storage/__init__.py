"""Code storage for function versions: where uploaded archives live and how uploads are authorised.

base.py      the `CodeStore` interface every store implements
local.py     `LocalCodeStore`: files under Morty's data directory, uploads served by Morty itself
s3.py        `S3CodeStore`: an S3 bucket, uploads by S3 pre-signed PUT (needs boto3)
signing.py   HMAC-signed, expiring upload tokens for the local store
archives.py  validation and safe extraction of zip and tar(.gz) archives
"""

from morty.storage.base import CodeStore, CodeStoreError, ObjectInfo, UploadTarget

__all__ = ["CodeStore", "CodeStoreError", "ObjectInfo", "UploadTarget"]
