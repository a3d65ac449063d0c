import builtins
from typing import Any, Callable

KINDS: list[str]
__version__: str

class VolbackError(Exception): ...

class CancelToken:
    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

class NativeContainer:
    def __init__(
        self,
        url: str,
        *,
        create: bool = ...,
        zstd_level: int | None = ...,
        chunk_avg: int | None = ...,
        pack_size: int | None = ...,
        s3_endpoint: str | None = ...,
        s3_region: str | None = ...,
        s3_access_key_id: str | None = ...,
        s3_secret_access_key: str | None = ...,
        s3_session_token: str | None = ...,
        s3_concurrency: int | None = ...,
        key: str | bytes | None = ...,
        object_lock_days: int | None = ...,
        object_lock_mode: str | None = ...,
    ) -> None: ...
    @property
    def url(self) -> str: ...
    @property
    def encrypted(self) -> bool: ...
    def keys(self) -> str: ...
    def add_key(self, new_key: str | bytes) -> str: ...
    def remove_key(self, id: str) -> None: ...
    def change_key(self, new_key: str | bytes) -> str: ...
    def config(self) -> str: ...
    def check(self) -> None: ...
    def backup(
        self,
        source: Any,
        *,
        backup_id: str,
        volume_id: str,
        parent_id: str | None = ...,
        metadata_json: str | None = ...,
        data_timestamp: str | None = ...,
        expected_size: int | None = ...,
        zstd_level: int | None = ...,
        size_hint: int = ...,
        progress: Callable[[int, int], bool | None] | None = ...,
        cancel: CancelToken | None = ...,
        labels: dict[str, str] | None = ...,
        read: str | None = ...,
    ) -> str: ...
    def restore(
        self,
        backup_id: str,
        target: Any,
        *,
        is_new: bool,
        sync: bool = ...,
        progress: Callable[[int, int], bool | None] | None = ...,
        cancel: CancelToken | None = ...,
    ) -> str: ...
    def delete(self, backup_id: str) -> None: ...
    def manifest(self, backup_id: str) -> str: ...
    def list(self) -> str: ...
    def restore_differential(
        self,
        backup_id: str,
        target: str,
        *,
        progress: Callable[[int, int], bool | None] | None = ...,
        cancel: CancelToken | None = ...,
    ) -> str: ...
    def read(self, backup_id: str, offset: int, length: int) -> bytes: ...
    def serve_nbd(
        self,
        backup_id: str,
        *,
        socket: str | None = ...,
        tcp: str | None = ...,
        cache_mib: int = ...,
        read_ahead_mib: int = ...,
    ) -> NativeNbdServer: ...
    def export_record(self, backup_id: str) -> str: ...
    def import_record(self, text: str) -> str: ...
    def verify(self, backup_id: str | None = ..., *, read_data: bool = ...) -> str: ...
    def undelete(self) -> int: ...
    def copy_to(
        self,
        dst: NativeContainer,
        *,
        backup_ids: builtins.list[str] | None = ...,
        volume_id: str | None = ...,
        labels: dict[str, str] | None = ...,
        allow_plaintext: bool = ...,
    ) -> str: ...
    def gc(
        self,
        *,
        dry_run: bool = ...,
        max_unused: float | None = ...,
        clock_skew: float | None = ...,
        min_age: float | None = ...,
    ) -> str: ...
    def prune(
        self,
        *,
        keep_last: int | None = ...,
        keep_hourly: int | None = ...,
        keep_daily: int | None = ...,
        keep_weekly: int | None = ...,
        keep_monthly: int | None = ...,
        keep_yearly: int | None = ...,
        keep_within: str | None = ...,
        group_by_label: str | None = ...,
        labels: dict[str, str] | None = ...,
        dry_run: bool = ...,
        allow_removing_newest: bool = ...,
        gc: bool = ...,
    ) -> str: ...

class NativeNbdServer:
    @property
    def uri(self) -> str: ...
    @property
    def size(self) -> int: ...
    def stats(self) -> str: ...
    def stop(self) -> None: ...

class NativeCinderSource:
    def __init__(
        self,
        url: str,
        *,
        s3_endpoint: str | None = ...,
        s3_region: str | None = ...,
        s3_access_key_id: str | None = ...,
        s3_secret_access_key: str | None = ...,
        s3_session_token: str | None = ...,
    ) -> None: ...
    def list(self) -> str: ...
    def restore(self, backup_id: str, target: str) -> str: ...
    def adopt_into(
        self,
        dst: NativeContainer,
        *,
        backup_ids: builtins.list[str] | None = ...,
        volume_id: str | None = ...,
        cinder_exports: builtins.list[str] | None = ...,
    ) -> str: ...
