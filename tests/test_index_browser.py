"""The Retrieve tab searches an archive index the host registered, in a real browser (Debian's Chromium,
headless, reaching nothing but the app): the index is built here with the default model from the
committed phantom renders, and the app is started with ``MEDCLIP_INDEX_ROOT`` pointing at it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from medclip_core.index import BuildOptions, build_index
from tests.test_browser import page, pytestmark  # noqa: F401  (the browser fixture and its skip rule)
from tests.conftest import free_port
from tests.test_index import N_PNG, make_archive

INDEX_NAME = "phantom-archive"


@pytest.fixture(scope="module")
def index_root(tmp_path_factory) -> Path:
    archive = make_archive(tmp_path_factory.mktemp("archive"))
    root = tmp_path_factory.mktemp("indexes")
    build_index(archive, None, root / INDEX_NAME, BuildOptions(workers=0, batch_size=16, progress=False))
    return root


@pytest.fixture(scope="module")
def app_url(index_root: Path):
    """The whole app, started with the index registered (the Retrieve tab lists indexes when it is built)."""
    from app import build_app

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDCLIP_INDEX_ROOT", str(index_root))
        demo = build_app()
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        yield demo.local_url
        demo.close()


def test_retrieve_tab_searches_the_registered_archive_index_by_text(page) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Retrieve").click()
    page.locator("#retrieve-archive-index input").click()
    page.get_by_role("option", name=INDEX_NAME).click()
    page.get_by_label("Text query").fill("left pleural effusion")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text(f"8 of {N_PNG + 1} images in archive index", exact=False).first).to_be_visible(
        timeout=60_000)
    thumbnails = page.locator("#retrieve-gallery img")
    expect(thumbnails.first).to_be_visible(timeout=30_000)
    assert thumbnails.count() == 8
    assert all(thumbnails.nth(i).evaluate("img => img.complete && img.naturalWidth == 224") for i in range(8))
    expect(page.get_by_text(re.compile(r"(left|right)/00\d\.png")).first).to_be_attached()  # archive ids in the table
