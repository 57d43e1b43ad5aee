#!/usr/bin/env bash
# Refresh the README / docs screenshots (docs/screenshot-TAB.png) from the browser tests of every tab,
# at 1280 x 800, with the embedded default model. Run from the repository root.
set -euo pipefail
export GRADIO_ANALYTICS_ENABLED=False MEDCLIP_SCREENSHOTS=docs
python -m pytest -q tests/test_browser_tabs.py "$@"
