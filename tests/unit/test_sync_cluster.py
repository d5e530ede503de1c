"""What a sync task carries to a Dask worker: URIs and settings, never a credential."""

from __future__ import annotations

import pickle

from occystrap.credentials import Credential
from occystrap.settings import RunSettings
from occystrap.sync.cluster import worker_settings
from occystrap.sync.run import CopyTask


def test_task_arguments_hold_no_secret():
    settings = RunSettings(
        username="alice",
        password="s3cret-password",
        src_creds=Credential("bob", "s3cret-src"),
        dest_creds=Credential("carol", "s3cret-dest"),
        quay_token="s3cret-token",
        rate_limits=("10",),
    )
    task = CopyTask("registry://a/b@sha256:" + "0" * 64, "registry://c/b:1", None, shown="x")
    carried = pickle.dumps((task, worker_settings(settings)))
    assert b"s3cret" not in carried
    assert worker_settings(settings).rate_limits == ()  # the scheduler's shared limiter
