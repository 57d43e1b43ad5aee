"""One module per app tab: widgets and event wiring only; all work happens in ``medclip_core``."""
